#!/usr/bin/env bash
# A real two-node Ray cluster on this machine, loopback only: a head node and a second worker
# node, each its own raylet, joined through the head's GCS as separate machines would be.
#
#   scripts/ray_local_cluster.sh start     start head + worker node; prints the address
#   scripts/ray_local_cluster.sh env       the variables a driver needs (eval "$(... env)")
#   scripts/ray_local_cluster.sh status    the nodes the cluster sees
#   scripts/ray_local_cluster.sh stop      stop only this cluster's processes
#
# Then:  eval "$(scripts/ray_local_cluster.sh env)"; dfpipe extract ... --engine ray --address "$DFPIPE_RAY_ADDRESS"
#
# What Ray 2.60 needs for this (measured here):
# - Token authentication is on by default for `ray start`: every node and every driver must
#   present the same token. We generate one per cluster into the state folder (mode 600) and
#   point RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH at it for every process; ~/.ray/auth_token
#   is never read or written.
# - `--node-ip-address=127.0.0.1` alone is not honoured on Linux: Ray swaps a loopback address
#   (the node's and the head's) for the machine's routable IP, and its one switch that keeps
#   loopback refuses a second node. The nodes are therefore started through
#   `python -m pipeline.engines.ray_cluster start ...` (Ray's own `ray start` with that swap turned off;
#   see its docstring). Every socket then listens on 127.0.0.1 (checked by
#   tests/test_ray_cluster.py with `ss -ltnp`).
# - `ray stop` would kill every Ray process of the machine (other jobs' too): `stop` here kills
#   only the processes whose command line names this cluster's temp folder.
#
# Settings (environment): DFPIPE_RAY_PORT (6390), DFPIPE_RAY_DIR (/tmp/dfpipe-ray-<port>; kept
# short: Ray's Unix socket paths must fit in 107 bytes), DFPIPE_RAY_HEAD_CPUS (1),
# DFPIPE_RAY_WORKER_CPUS (1), PY (the Python with ray and dfpipe; default: ./.venv/bin/python).
# Worker processes import dfpipe from wherever that Python finds it (PYTHONPATH is passed on).
set -euo pipefail

PORT="${DFPIPE_RAY_PORT:-6390}"
DIR="${DFPIPE_RAY_DIR:-/tmp/dfpipe-ray-$PORT}"
HEAD_CPUS="${DFPIPE_RAY_HEAD_CPUS:-1}"
WORKER_CPUS="${DFPIPE_RAY_WORKER_CPUS:-1}"
if [ -z "${PY:-}" ]; then
  here="$(cd "$(dirname "$0")/.." && pwd)"
  if [ -x "$here/.venv/bin/python" ]; then PY="$here/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
ADDRESS="127.0.0.1:$PORT"
TOKEN="$DIR/auth_token"

die() { echo "ray_local_cluster: $*" >&2; exit 1; }

cluster_env() {
  export RAY_AUTH_MODE=token
  export RAY_AUTH_TOKEN_PATH="$TOKEN"
  export RAY_USAGE_STATS_ENABLED=0
}

our_pids() {
  # every process started for this cluster names its temp folder on its command line
  pgrep -f -- "$DIR/tmp" || true
}

start() {
  "$PY" -c 'import ray, pipeline' 2>/dev/null \
    || die "$PY cannot import ray and pipeline (pip install -e '.[dist]', or set PY=)"
  [ -z "$(our_pids)" ] || die "a cluster is already running with state in $DIR (stop it first)"
  if ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$PORT\$"; then
    die "port $PORT is in use (set DFPIPE_RAY_PORT)"
  fi
  mkdir -p "$DIR/tmp"
  chmod 700 "$DIR"
  umask 077
  python3 -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN"
  cluster_env
  common=(--disable-usage-stats --temp-dir="$DIR/tmp")
  "$PY" -m pipeline.engines.ray_cluster start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus="$HEAD_CPUS" \
    --include-dashboard=false --ray-client-server-port="$((PORT + 1))" "${common[@]}" \
    > "$DIR/head.log" 2>&1 \
    || { cat "$DIR/head.log" >&2; die "head node did not start (log above)"; }
  "$PY" -m pipeline.engines.ray_cluster start --address="$ADDRESS" --node-ip-address=127.0.0.1 \
    --num-cpus="$WORKER_CPUS" "${common[@]}" > "$DIR/worker.log" 2>&1 \
    || { cat "$DIR/worker.log" >&2; stop; die "worker node did not join (log above)"; }
  # wait until the head sees both nodes
  for _ in $(seq 1 60); do
    n="$(nodes 2>/dev/null || echo 0)"
    [ "$n" = "2" ] && break
    sleep 1
  done
  [ "${n:-0}" = "2" ] || { stop; die "the head saw ${n:-0} nodes after 60 s, expected 2"; }
  echo "ray_local_cluster: 2 nodes up at $ADDRESS (state in $DIR)"
}

nodes() {
  cluster_env
  "$PY" - "$ADDRESS" <<'PY'
import logging, sys
import ray
from ray._private import ray_constants
ray_constants.ENABLE_RAY_CLUSTER = False  # a driver: keep the loopback address (see pipeline/engines/ray_cluster.py)
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
print(sum(1 for n in ray.nodes() if n.get("Alive")))
ray.shutdown()
PY
}

stop() {
  pids="$(our_pids)"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 20); do [ -z "$(our_pids)" ] && break; sleep 0.5; done
    pids="$(our_pids)"
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
  fi
  rm -rf "$DIR"
  echo "ray_local_cluster: stopped ($DIR removed)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) echo "alive nodes: $(nodes)" ;;
  env)
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH='$TOKEN'"
    echo "export RAY_USAGE_STATS_ENABLED=0"
    echo "export DFPIPE_RAY_ADDRESS='$ADDRESS'"
    ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac

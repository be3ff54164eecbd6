"""A real two-node Ray cluster on loopback (``scripts/ray_local_cluster.sh``): ``dfpipe extract``
and ``dfpipe score`` with ``--address`` give the same manifests / results as the local pool.

The cluster has a head node and a second worker node (separate raylets joined through the head's
GCS, token authentication on), one CPU each, and the runs ask for two workers: one actor can only
run on each node, so both nodes do part of the work. Every listening socket of the cluster's
processes must be on 127.0.0.1 (tests never listen on or talk to another address).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io.manifest import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ray_local_cluster.sh"


def _free_port_pair() -> int:
    """A port p on 127.0.0.1 with p and p + 1 free (the head's GCS and its client server)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 60000:
            continue
        try:
            with socket.socket() as s1:
                s1.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _cluster_env(port: int, state: Path) -> dict[str, str]:
    env = dict(os.environ, DFPIPE_RAY_PORT=str(port), DFPIPE_RAY_DIR=str(state), PY=sys.executable,
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")  # a dependency of ray
    port = _free_port_pair()
    state = Path(f"/tmp/dfr-{port}")  # short: Ray's socket paths must fit in 107 bytes
    env = _cluster_env(port, state)
    r = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                       timeout=240)
    try:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        for line in subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True,
                                   text=True, check=True).stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value.strip("'")
        yield {"env": env, "address": env["DFPIPE_RAY_ADDRESS"], "state": state, "psutil": psutil}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
    assert not state.exists()


def _cluster_listening(cluster) -> list[tuple[str, int, str]]:
    psutil = cluster["psutil"]
    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(cluster["state"]) not in cmd:
            continue
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        # an IPv6 socket bound to ::ffff:127.0.0.1 (IPv4-mapped) is loopback-only too
        out += [(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port, proc.info["name"]) for c in conns
                if c.status == psutil.CONN_LISTEN]
    return out


def test_two_nodes_token_auth_and_loopback_only(cluster):
    env = cluster["env"]
    assert env["RAY_AUTH_MODE"] == "token"
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert token.is_file() and oct(token.stat().st_mode & 0o777) == "0o600"
    r = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "alive nodes: 2" in r.stdout, r.stderr[-2000:]
    listening = _cluster_listening(cluster)
    names = {n for _, _, n in listening}
    assert len(listening) >= 6 and {"gcs_server", "raylet"} <= names, listening
    assert all(ip == "127.0.0.1" for ip, _, _ in listening), listening
    # without the token a driver is refused (token auth really is on)
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
    no_token["HOME"] = str(cluster["state"])  # no ~/.ray/auth_token either
    code = ("from pipeline.engines.ray_actors import connect_ray; import sys; "
            f"connect_ray({cluster['address']!r})")
    r = subprocess.run([sys.executable, "-c", code], env=no_token, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "token" in r.stderr.lower(), r.stderr[-2000:]


def _dfpipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True,
                          text=True, timeout=500)


def _without_timing(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in ("seconds",) if c in df])


def test_extract_and_score_on_the_cluster_equal_the_pool(cluster, synth_dir, tmp_path):
    env = cluster["env"]
    out = {}
    for engine in ("ray", "pool"):
        d = tmp_path / engine
        extra = ["--address", cluster["address"]] if engine == "ray" else []
        r = _dfpipe(["extract", str(synth_dir), "--out", str(d / "faces"), "--manifest-dir",
                     str(d / "m"), "--engine", engine, "--workers", "2", "--scale", "0.5",
                     "--batch-size", "8", *extra], env)
        assert r.returncode == 0, r.stderr[-3000:]
        if engine == "ray":  # two actors on a 1 + 1 CPU cluster: one on each node
            assert f"connected to Ray at {cluster['address']}" in r.stderr
            assert "2 Ray actors ready" in r.stderr, r.stderr[-3000:]
        r = _dfpipe(["score", str(synth_dir), "--checkpoint", "default", "--out",
                     str(d / "results.jsonl"), "--engine", engine, "--workers", "2",
                     "--device", "cpu", *extra], env)
        assert r.returncode == 0, r.stderr[-3000:]
        out[engine] = d

    for name in ("videos", "faces"):
        path = next(p for p in (out["ray"] / "m").iterdir()
                    if p.stem == name and p.suffix in (".csv", ".parquet"))
        m_ray = read_manifest(path, name)
        m_pool = read_manifest(out["pool"] / "m" / path.name, name)
        if "crop_path" in m_ray:  # absolute paths differ by the output folder only
            for df, root in ((m_ray, out["ray"]), (m_pool, out["pool"])):
                df["crop_path"] = df["crop_path"].astype(str).str.replace(str(root), "", regex=False)
        pd.testing.assert_frame_equal(_without_timing(m_pool), _without_timing(m_ray))
    assert len(m_ray) > 0

    def results(d: Path) -> dict[str, dict]:
        rows = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
        drop = ("seconds", "score_seconds", "evidence")
        return {Path(r["path"]).name: {k: v for k, v in r.items() if k not in drop and "time" not in k}
                for r in rows}

    r_ray, r_pool = results(out["ray"]), results(out["pool"])
    assert len(r_ray) == 4 and set(r_ray) == set(r_pool)
    assert all(row["status"] == "ok" for row in r_ray.values()), r_ray
    for name in r_ray:  # the same verdicts, tracks, windows and timelines (floats to 1e-6)
        assert _rounded(r_ray[name]) == _rounded(r_pool[name]), name


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def test_stop_kills_only_this_cluster(tmp_path):
    """``stop`` kills the processes that name this cluster's temp folder, and no others (plain
    ``ray stop`` would kill every Ray process on the machine)."""
    port = _free_port_pair()
    state, other = tmp_path / "state", tmp_path / "other"
    (state / "tmp").mkdir(parents=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]  # argv keeps the folder
    ours = subprocess.Popen([*sleeper, str(state / "tmp")])
    theirs = subprocess.Popen([*sleeper, str(other / "tmp")])
    try:
        r = subprocess.run(["bash", str(SCRIPT), "stop"], env=_cluster_env(port, state),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not state.exists()
        assert ours.wait(timeout=30) is not None
        assert theirs.poll() is None
    finally:
        for p in (ours, theirs):
            p.kill()
            p.wait()

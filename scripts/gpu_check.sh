#!/usr/bin/env bash
# GPU check (under 8 minutes on one GPU): extract + score + a short training run on CUDA, each
# printing its throughput and peak GPU memory. Run it on a machine with a GPU:
#   PYTHON=.venv/bin/python scripts/gpu_check.sh [WORK_DIR]
# Data: a small synthetic DFDC-like set made here (1080p clips), nothing downloaded.
# Exit status: 0 all steps ran; 2 no CUDA device (nothing checked); 1 a step failed.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU on 640x360 clips (checks the script
# itself, on a machine without a GPU; figures then mean nothing for the GPU).
set -euo pipefail

PY=${PYTHON:-python}
WORK=${1:-$(mktemp -d -t dfpipe_gpu_check.XXXXXX)}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH=${PYTHONPATH:-$(cd "$(dirname "$0")/.." && pwd)}
SIZE=(--width 1920 --height 1080)
if [ "$DEVICE" = cpu ]; then
    SIZE=(--width 640 --height 360)
    echo "gpu_check: GPU_CHECK_DEVICE=cpu: checking the steps on the CPU"
elif ! "$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    print(f"gpu_check: no CUDA device visible to torch {torch.__version__} "
          f"(CUDA build: {torch.version.cuda or 'none'}): nothing checked; the CPU path does not "
          "depend on a GPU", file=sys.stderr)
    sys.exit(2)
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
then
    exit 2
fi

mkdir -p "$WORK"
echo "gpu_check: work folder $WORK"
"$PY" -m pipeline synth "$WORK/data" --n-originals 3 --fakes-per-original 1 --frames 300 \
    "${SIZE[@]}" --seed 0 >/dev/null

# Each step runs in-process (engine inline) so torch's peak-memory counter sees its CUDA work.
"$PY" - "$WORK" "$DEVICE" <<'EOF'
import sys
import time
from pathlib import Path

import torch

from pipeline.cli import main

work, device = Path(sys.argv[1]), sys.argv[2]
cuda = device == "cuda"


def step(name, argv, unit=None, n=0):
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rc = main(argv)
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    rate = f", {n} {unit} ({n / sec:.1f} {unit}/s)" if unit else ""
    mem = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda
           else "")
    print(f"gpu_check: {name} on {device}: exit {rc}, {sec:.1f} s{rate}{mem}", flush=True)
    if rc:
        sys.exit(1)


videos = sorted((work / "data").rglob("*.mp4"))
step("extract (track mode)",
     ["extract", str(work / "data"), "--out", str(work / "faces"), "--manifest-dir",
      str(work / "m"), "--engine", "inline", "--device", device], "frames", 300 * len(videos))
step("prepare", ["prepare", "--manifest-dir", str(work / "m")])
step("train (cnn_lstm/tiny, 2 epochs)",
     ["train", "--manifest-dir", str(work / "m"), "--out-dir", str(work / "ckpt"), "--run-name",
      "gpu", "--epochs", "2", "--device", device])
step("score (MTCNN + model)",
     ["score", *map(str, videos), "--checkpoint", str(work / "ckpt" / "gpu" / "best.pt"),
      "--out", str(work / "scores.jsonl"), "--device", device], "videos", len(videos))
print("gpu_check: done")
EOF

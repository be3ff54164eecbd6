"""``dfpipe bench``: speed measurements (never part of the tests): a video -> JSON + Markdown.

- ``bench_decode``: a full decode per backend (decord's own ``get_batch``, our default streaming
  path, PyAV, OpenCV);
- ``bench_extract`` (``pipeline.bench.extract``): on one clip, the decode floor, the default
  (track), ``--detector-mode full``, ``--detect-every 5`` and the naive loop, each as s/video, x
  floor and agreement with full detection; then ``dfpipe extract --workers 2`` from the command
  line over 4 copies, against 4 floors, with peak RSS per worker;
- ``bench_score``: ``VideoScorer.score`` end to end (decode, slot detection, model, verdict) with
  and without the evidence sheet, as a ratio to the decode-only floor;
- ``bench_scaling``: ``dfpipe extract`` over N copies of the video with 1 and 2 pool workers and
  with Ray;
- ``bench_train``: training clips/s and peak RSS per backbone (``pipeline.bench.train``);
- ``crop-margin`` (not a speed measurement; run only when asked): which crop recipe reproduces
  the ``dfdc_faces`` crops (``pipeline.bench.cropcheck``) and, with ``--checkpoint``, p_fake of the
  labelled real sample clips at each margin.

Times are wall-clock seconds on whatever machine runs them (its description is recorded);
medians over ``repeats``. Without ``--video`` a 10 s 1920x1080 synthetic clip is generated.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.bench.extract import median_time as _median_time
from pipeline.config import BenchConfig, ExtractConfig
from pipeline.core.errors import ConfigError
from pipeline.core.fsutil import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def _decode_all(path: str, backend: str) -> int:
    """Decode every frame; ``decord_get_batch`` = decord's own batched random access;
    ``decord_plain_loop``/``pyav_plain_loop``: each library's plain loop, no project code (the
    extract benchmark's floor)."""
    from pipeline.bench import extract as bench_extract
    from pipeline.io.video import open_video

    if backend in ("decord_plain_loop", "pyav_plain_loop"):
        plain = bench_extract.plain_decord if backend.startswith("decord") else bench_extract.plain_pyav
        return plain(path)
    if backend == "decord_get_batch":
        reader = open_video(path, "decord")
        n_frames = reader.info.n_frames
        n = 0
        for start in range(0, n_frames, 32):
            n += len(reader.get_batch(list(range(start, min(n_frames, start + 32)))))
    else:
        reader = open_video(path, backend)
        n = sum(len(idx) for idx, _ in reader.iter_batches(32))
    reader.close()
    return n


def bench_decode(video: str | os.PathLike, backends: Sequence[str] = ("decord", "pyav"),
                 repeats: int = 3) -> dict[str, Any]:
    """Full-decode time of ``video`` per backend: seconds/video, ms/frame, ratio to the fastest."""
    out: dict[str, Any] = {"video": str(video), "repeats": repeats, "backends": {}}
    for b in backends:
        sec, n = _median_time(lambda b=b: _decode_all(str(video), b), repeats)
        out["backends"][b] = {"s_per_video": round(sec, 3), "ms_per_frame": round(1000 * sec / n, 2),
                              "frames": n}
    fastest = min(v["s_per_video"] for v in out["backends"].values())
    for v in out["backends"].values():
        v["ratio_to_fastest"] = round(v["s_per_video"] / fastest, 2)
    return out


def bench_extract(video: str | os.PathLike, repeats: int = 1, cfg: ExtractConfig | None = None,
                  cli_videos: int = 4, cli_workers: int = 2) -> dict[str, Any]:
    """``pipeline.bench.extract``: the modes on one clip, then ``dfpipe extract --workers``
    from the command line on ``cli_videos`` copies (skipped with ``cli_videos=0``)."""
    from pipeline.bench import extract as be

    cfg = cfg or ExtractConfig()
    res = be.bench_extract(video, repeats, cfg=cfg)
    if cli_videos:
        res["cli"] = be.bench_extract_cli(video, cli_videos, cli_workers, res["decode"]["floor_s"],
                                          cfg.device)
    return res


def _tiny_random_checkpoint(folder: Path, backbone: str = "tiny") -> Path:
    """A random-init ``cnn_lstm`` checkpoint (speed does not depend on the weights' values)."""
    from pipeline.models import create_model
    from pipeline.models.checkpoint import library_versions, save_checkpoint

    model = create_model("cnn_lstm", backbone=backbone)
    return save_checkpoint(folder / f"random_{backbone}.pt", {
        "model": {"name": "cnn_lstm", "kwargs": dict(model.model_kwargs)},
        "state_dict": model.state_dict(), "epoch": 0, "threshold": 0.5,
        "config": {"backbone": backbone, "image_size": 160},
        "preprocess": {"image_size": 160}, "versions": library_versions(),
        "train_data": {"synthetic": None, "note": "random init, for benchmarks only"},
    })


def bench_score(video: str | os.PathLike, repeats: int = 1, checkpoint: str | None = None,
                backbones: Sequence[str] = ("tiny", "resnet18"), device: str = "cpu"
                ) -> dict[str, Any]:
    """End-to-end seconds to score ``video`` (default settings), with and without evidence.

    Without ``checkpoint`` random-init ``cnn_lstm`` checkpoints are made per backbone (1 torch
    thread). The ratio to the decode-only time of the same video is the target (<= 3x on CPU).
    With ``checkpoint`` (a path, or ``default``: the shipped model): ``bench_score_checkpoint``.
    """
    import tempfile

    import torch

    from pipeline.score.scorer import VideoScorer

    if checkpoint:
        return bench_score_checkpoint(video, repeats, checkpoint, device)
    torch.set_num_threads(1)
    path = str(video)
    dec, _ = _median_time(lambda: _decode_all(path, "decord"), repeats)
    res: dict[str, Any] = {"video": path, "repeats": repeats, "device": device,
                           "decode_only_s": round(dec, 2), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {f"cnn_lstm/{b} (random init)": str(_tiny_random_checkpoint(Path(tmp), b))
                 for b in backbones}
        for name, ck in ckpts.items():
            scorer = VideoScorer.from_checkpoint(ck, device=device)
            scorer.score(path)  # warm-up: first call pays one-off start-up costs
            sec, r = _median_time(lambda s=scorer: s.score(path), repeats)
            sec_x, _ = _median_time(lambda s=scorer: s.score(path, explain_dir=Path(tmp) / "ev"),
                                    repeats)
            res["models"][name] = {"s_per_video": round(sec, 2), "x_decode": round(sec / dec, 2),
                                   "with_explain_s": round(sec_x, 2),
                                   "with_explain_x_decode": round(sec_x / dec, 2),
                                   "status": r["status"], "frames_used": r["frames_used"]}
    return res


def bench_score_checkpoint(video: str | os.PathLike, repeats: int, checkpoint: str,
                           device: str = "cpu") -> dict[str, Any]:
    """Seconds to score ``video`` with ``checkpoint`` as ``dfpipe score`` runs it (torch's default
    threads, the inference precision of this machine), against the decode floor (decord's plain
    loop, no project code) and the same scorer in float32: one warm-up each, then ``repeats``
    rounds interleaved (decode, score, score in float32), medians (a busy moment slows every
    variant alike)."""
    import statistics

    import torch

    from pipeline.release import resolve_checkpoint
    from pipeline.score.scorer import VideoScorer
    from pipeline.train.engine import inference_precision

    path = str(video)
    scorer = VideoScorer.from_checkpoint(resolve_checkpoint(checkpoint), device=device)
    floor = "decode floor (decord plain loop)"
    runs: dict[str, Callable[[], Any]] = {floor: lambda: _decode_all(path, "decord_plain_loop")}
    for precision in dict.fromkeys((inference_precision(scorer.device), "float32")):
        runs[f"score, {precision}"] = lambda p=precision: _in_precision(p, scorer.score, path)
    times: dict[str, list[float]] = {k: [] for k in runs}
    last: dict[str, Any] = {k: fn() for k, fn in runs.items()}  # warm-up
    for _ in range(max(1, repeats)):
        for k, fn in runs.items():
            t = time.perf_counter()
            last[k] = fn()
            times[k].append(time.perf_counter() - t)
    dec = statistics.median(times[floor])
    res: dict[str, Any] = {"video": path, "repeats": repeats, "device": device,
                           "checkpoint": scorer.ckpt_path, "torch_threads": torch.get_num_threads(),
                           "decode_only_s": round(dec, 3), "models": {}}
    for k in runs:
        if k == floor:
            continue
        sec, r = statistics.median(times[k]), last[k]
        res["models"][k] = {"s_per_video": round(sec, 2), "x_decode": round(sec / dec, 2),
                            "runs_s": [round(t, 2) for t in times[k]], "status": r["status"],
                            "p_fake": r["p_fake"], "label": r["label"],
                            "frames_used": r["frames_used"],
                            "precision": r["checkpoint"]["precision"]}
    return res


def _in_precision(precision: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``DFPIPE_INFERENCE_PRECISION=precision`` (the environment restored after)."""
    from unittest import mock

    from pipeline.train.engine import PRECISION_ENV

    with mock.patch.dict(os.environ, {PRECISION_ENV: precision}):
        return fn(*args)


def bench_scaling(video: str | os.PathLike, n_videos: int = 4, device: str = "cpu",
                  engines: Sequence[tuple[str, int]] = (("pool", 1), ("pool", 2), ("ray", 2))
                  ) -> dict[str, Any]:
    """``dfpipe extract`` wall time over ``n_videos`` copies of ``video`` per (engine, workers).

    Each configuration starts from an empty output folder; the speed-up is against one pool
    worker. Ray's number includes starting the embedded local Ray.
    """
    import importlib.util
    import shutil
    import tempfile

    from pipeline.extract import stage as extract

    res: dict[str, Any] = {"video": str(video), "videos": n_videos, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "videos"
        src.mkdir()
        for k in range(n_videos):
            os.symlink(Path(video).resolve(), src / f"copy{k:02d}{Path(video).suffix}")
        for engine, workers in engines:
            if engine == "ray" and importlib.util.find_spec("ray") is None:
                res["runs"][f"{engine}x{workers}"] = {"error": "ray not installed (dfpipe[dist])"}
                continue
            out = Path(tmp) / f"out_{engine}_{workers}"
            cfg = ExtractConfig(inputs=(str(src),), out=str(out / "faces"),
                                manifest_dir=str(out / "m"), engine=engine, workers=workers,
                                device=device)
            t = time.perf_counter()
            rc = extract.run(cfg)
            sec = time.perf_counter() - t
            res["runs"][f"{engine}x{workers}"] = {"s_total": round(sec, 1),
                                                  "s_per_video": round(sec / n_videos, 2), "rc": rc}
            shutil.rmtree(out, ignore_errors=True)
    base = res["runs"].get("poolx1", {}).get("s_total")
    for v in res["runs"].values():
        if base and "s_total" in v:
            v["speedup_vs_1_worker"] = round(base / v["s_total"], 2)
    return res


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "torch": str(torch.__version__), "cuda": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None, "load_avg_1min_at_start": load,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def default_video(folder: Path) -> Path:
    """A 10 s 1920x1080 30 fps H.264 synthetic face clip (when no ``--video`` is given)."""
    from pipeline.synth.dataset import make_clip

    path = folder / "synthetic_1080p_10s.mp4"
    if not path.is_file():
        make_clip(path, n_frames=300, width=1920, height=1080, fps=30.0, seed=0)
    return path


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


def _markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    lines = ["# dfpipe benchmarks", "",
             f"{m.get('date', '')}; {m.get('cpu', '')}, {m.get('cores', '')} cores, "
             f"{m.get('memory', '')}; torch {m.get('torch', '')}; GPU: {m.get('cuda') or 'none'}; "
             f"load average at start {m.get('load_avg_1min_at_start')}; command: "
             f"`{results.get('command', '')}`", ""]
    if "decode" in results:
        r = results["decode"]
        lines += [f"## decode: {r['video']}", ""]
        lines += _table(["backend", "s/video", "ms/frame", "x fastest"],
                        [[b, v["s_per_video"], v["ms_per_frame"], v["ratio_to_fastest"]]
                         for b, v in r["backends"].items()])
    if "extract" in results:
        from pipeline.bench.extract import markdown as extract_markdown

        lines += extract_markdown(results["extract"])
    if "extract_agreement" in results:
        from pipeline.bench.extract import agreement_markdown

        lines += agreement_markdown(results["extract_agreement"])
    if "score" in results:
        r = results["score"]
        lines += [f"## score (end to end): decode-only {r['decode_only_s']} s"
                  + (f", {r['checkpoint']}, {r['torch_threads']} torch threads"
                     if r.get("checkpoint") else ""), ""]
        if r.get("checkpoint"):
            lines += _table(["run", "s/video (median)", "x decode", "runs s", "p_fake", "label"],
                            [[k, v["s_per_video"], v["x_decode"], v["runs_s"], v["p_fake"],
                              v["label"]] for k, v in r["models"].items()])
        else:
            lines += _table(["model", "s/video", "x decode", "with evidence s", "x decode"],
                            [[k, v["s_per_video"], v["x_decode"], v["with_explain_s"],
                              v["with_explain_x_decode"]] for k, v in r["models"].items()])
    if "scaling" in results:
        r = results["scaling"]
        lines += [f"## extraction scaling: {r['videos']} copies", ""]
        lines += _table(["engine x workers", "s total", "s/video", "speed-up vs 1 worker"],
                        [[k, v.get("s_total", v.get("error")), v.get("s_per_video", ""),
                          v.get("speedup_vs_1_worker", "")] for k, v in r["runs"].items()])
    if "crop_margin" in results:
        lines += _crop_margin_markdown(results["crop_margin"])
    if "train" in results:
        lines += ["## training (cnn_lstm, 30 frames x 160 px, batch 2, 1 thread)", ""]
        lines += _table(["backbone", "clips/s", "s/step", "peak RSS MiB", "params M"],
                        [[k, round(v["clips_per_s"], 2), round(v["seconds_per_step"], 2),
                          round(v["peak_rss_mib"]), round(v["params_m"], 2)] if "error" not in v
                         else [k, v["error"], "", "", ""] for k, v in results["train"].items()])
    return "\n".join(lines)


def _markdown_all(results: dict[str, Any]) -> str:
    text = _markdown(results)
    if "samples" in results:
        from pipeline.bench.crossdata import markdown as samples_markdown

        text += "\n\n" + "\n".join(samples_markdown(results["samples"]))
    if "scale" in results:
        from pipeline.bench.scale import markdown

        text += "\n\n" + "\n".join(markdown(results["scale"]))
    return text


def run(cfg: BenchConfig) -> int:
    """Run the chosen benchmarks; write ``bench.json`` and ``bench.md`` into ``cfg.out``."""
    import sys

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.video and not Path(cfg.video).is_file():
        raise ConfigError(f"bench: {cfg.video}: file not found")
    needs_video = bool(set(cfg.what) & {"decode", "extract", "score", "scaling"})
    video = str(cfg.video or (default_video(out) if needs_video else ""))
    results: dict[str, Any] = {"machine": machine_info(), "command": " ".join(["dfpipe", *sys.argv[1:]])}
    steps = [("decode", lambda: bench_decode(video, ("decord_plain_loop", "pyav_plain_loop",
                                                     "decord_get_batch", "decord", "pyav", "cv2"),
                                             cfg.repeats)),
             ("extract", lambda: bench_extract(video, cfg.repeats,
                                               cfg=ExtractConfig(device=cfg.device),
                                               cli_videos=cfg.scaling_videos)),
             ("extract-agreement", lambda: _extract_agreement(cfg)),
             ("score", lambda: bench_score(video, cfg.repeats, cfg.checkpoint, device=cfg.device)),
             ("scaling", lambda: bench_scaling(video, cfg.scaling_videos, cfg.device)),
             ("train", lambda: _bench_train(cfg)),
             ("crop-margin", lambda: bench_crop_margin(cfg)),
             ("samples", lambda: _bench_samples(cfg)),
             ("scale", lambda: _bench_scale(cfg))]
    for name, fn in steps:
        if name in cfg.what:
            logger.info("bench: %s ...", name)
            results[name.replace("-", "_")] = fn()
            atomic_write_json(out / "bench.json", results)  # partial results survive a crash
    atomic_write_text(out / "bench.md", _markdown_all(results))
    logger.info("bench: results in %s (bench.md, bench.json)", out)
    return 0


def _extract_agreement(cfg: BenchConfig) -> dict[str, Any]:
    from pipeline.bench.extract import agreement_all

    if not Path(cfg.samples).is_dir():
        raise ConfigError(f"bench extract-agreement: {cfg.samples}: folder not found")
    return agreement_all(cfg.samples, ExtractConfig(device=cfg.device))


def _bench_scale(cfg: BenchConfig) -> dict[str, Any]:
    from pipeline.bench.scale import bench_scale

    return bench_scale(cfg.out, cfg.videos)


def _bench_samples(cfg: BenchConfig) -> dict[str, Any]:
    from pipeline.bench.crossdata import score_samples

    if not Path(cfg.samples).is_dir():
        raise ConfigError(f"bench samples: {cfg.samples}: folder not found")
    return score_samples(cfg.checkpoint or "default", cfg.samples, cfg.device)


def _bench_train(cfg: BenchConfig) -> dict[str, Any]:
    from pipeline.bench.train import bench_train

    return bench_train(list(cfg.backbones))


def bench_crop_margin(cfg: BenchConfig) -> dict[str, Any]:
    """Crop geometry + JPEG quality of ``cfg.faces_dataset`` vs our crops; scores by margin."""
    from pipeline.bench import cropcheck
    from pipeline.release import resolve_checkpoint

    for p in (cfg.samples, cfg.faces_dataset):
        if not Path(p).is_dir():
            raise ConfigError(f"bench crop-margin: {p}: folder not found")
    out = cropcheck.measure(cfg.samples, cfg.faces_dataset, cfg.margins)
    if cfg.checkpoint is not None:
        videos = cropcheck.labelled_samples(cfg.samples)
        out["scores"] = cropcheck.scores_by_margin(resolve_checkpoint(cfg.checkpoint),
                                                   [v["path"] for v in videos], cfg.margins,
                                                   cfg.device)
        out["scores"]["labels"] = {Path(v["path"]).stem: v["label"] for v in videos}
        out["scores"]["summary"] = cropcheck.margin_summary(out["scores"]["rows"], videos)
    return out


def _crop_margin_markdown(r: dict[str, Any]) -> list[str]:
    lines = ["## crop margin: our MTCNN crops vs the dfdc_faces crops", "",
             "Best normalized cross-correlation (grey, both at 224 px) over every 3rd frame of "
             "the first 300; side = our crop's side in source pixels / the data set crop's "
             "(metadata.csv original_width/height).", ""]
    clips = r.get("clips", {})
    if clips:
        names = list(clips)
        header = ["margin", "square"] + [f"{n} NCC (MAE, side ratio)" for n in names] + ["mean NCC"]
        keys = [(row["margin"], row["square"]) for row in clips[names[0]]["rows"]]
        rows = []
        for m, sq in keys:
            cells = []
            nccs = []
            for n in names:
                row = next(x for x in clips[n]["rows"] if (x["margin"], x["square"]) == (m, sq))
                cells.append(f"{row['ncc']:.3f} ({row['mae']:.1f}, {row['side_vs_original']:.2f})")
                nccs.append(row["ncc"])
            rows.append([f"{m:+.3f}", "yes" if sq else "no", *cells, f"{sum(nccs) / len(nccs):.3f}"])
        lines += _table(header, rows)
        lines += [f"- {n} ({c['label']}): best frame {c.get('best_frame')}, our box side "
                  f"{c.get('box_side')} px vs the crop's {c['original_side']:.0f} px: implied "
                  f"margin {c.get('implied_margin')}; its JPEG quality {c['reference_jpeg_quality']}"
                  for n, c in clips.items()]
        lines.append("")
    j = r.get("jpeg")
    if j:
        lines += [f"JPEG quality of {j['files']} of {j['of']} crops (IJG tables): "
                  + ", ".join(f"q{q}: {n}" for q, n in j["qualities"].items()), ""]
    sc = r.get("scores")
    if sc:
        margins = sorted({row["margin"] for row in sc["rows"]})
        vids = list(dict.fromkeys(row["video"] for row in sc["rows"]))
        lines += [f"### p_fake by margin: `{sc['checkpoint']}` (recipe otherwise {sc['recipe']})", "",
                  "Cells: the video's p_fake (max over tracks) / the deciding track's mean "
                  "per-frame p_fake; '-' = no score (status).", ""]
        rows = []
        for v in vids:
            cells = []
            for m in margins:
                row = next(x for x in sc["rows"] if x["video"] == v and x["margin"] == m)
                cells.append("-" if row["p_fake"] is None else
                             f"{row['p_fake']:.3f} / {row['frame_mean']:.3f}")
            rows.append([v, sc["labels"].get(v, ""), *cells])
        lines += _table(["video", "label", *[f"m {m:+.3f}" for m in margins]], rows)
        summary = sc.get("summary") or []
        if summary:
            left_out = ", ".join(summary[0]["excluded"]) or "none"
            lines += [f"Per margin, leaving out the clips whose crop is in dfdc_faces ({left_out}: "
                      "seen in training): ROC AUC [95% grouped-bootstrap interval over originals] "
                      "and mean p_fake per class.", ""]
            lines += _table(["margin", "REAL / FAKE clips", "ROC AUC", "mean p_fake REAL",
                             "mean p_fake FAKE"],
                            [[f"{s['margin']:+.3f}", f"{s['n_real']} / {s['n_fake']}",
                              f"{s['roc_auc']:.3f} [{s['roc_auc_lo']:.3f}, {s['roc_auc_hi']:.3f}]",
                              "-" if s["mean_p_real"] is None else f"{s['mean_p_real']:.3f}",
                              "-" if s["mean_p_fake"] is None else f"{s['mean_p_fake']:.3f}"]
                             for s in summary])
    return lines

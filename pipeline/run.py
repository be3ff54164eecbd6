"""``dfpipe run``: the whole pipeline end to end.

DFDC-style folders (or, when none are given, a synthetic DFDC-like set generated on the spot)
-> extract -> prepare -> train ``cnn_lstm`` and ``frame`` -> evaluate both (+ ``frame_mean``)
-> score a few test videos with evidence sheets; when the shipped real model
(``pipeline/release``) is installed, score the same videos with it too, so a newcomer sees both
(each verdict names its model; on synthetic clips the real model's verdicts mean little).
Every stage writes into ``work_dir``:

    work_dir/synthetic/      generated data (only without inputs)
    work_dir/faces/          face crops, one folder per video
    work_dir/manifests/      videos, faces, outliers, clips, gaps, split (+ .meta.json)
    work_dir/checkpoints/    one run folder per model
    work_dir/report/         the comparison report (report.md, plots, predictions)
    work_dir/scores/         results.jsonl + evidence sheets for a few test videos
    work_dir/scores_shipped/ the same videos scored by the shipped real model (when installed)

Each stage resumes: rerunning skips finished work. Progress and the headers of the verdict
lists are logged (stderr); the verdicts themselves are ``dfpipe score``'s lines. The last line
logged names the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import config, release
from pipeline.core.errors import PipelineError
from pipeline.evaluate import stage as evaluation
from pipeline.extract import stage as extract
from pipeline.io.manifest import manifest_path, read_manifest
from pipeline.prepare import stage as prepare
from pipeline.score import batch as scoring
from pipeline.synth import dataset as synth
from pipeline.train import stage as training

log = logging.getLogger(__name__)

DEMO_SYNTH = dict(n_originals=16, fakes_per_original=1, frames=300, outlier_share=0.0625,
                  two_face_share=0.0625, gap_share=0.0625)
"""Synthetic set of the demo: 16 groups (an original and its fake), 300-frame clips like DFDC's
(the 30-slot sampler needs frames 0..290), one group each of length outliers, two-face clips and
face gaps: small enough for minutes on 2 CPU cores, with every quirk the stages handle."""

DEMO_MODELS = ("cnn_lstm", "frame")
"""Registry models the demo trains and compares (the frame model brings its ``frame_mean``)."""

DEMO_TRAIN = dict(image_size=64, lr=3e-3, dropout=0.0, readout="mean", augment=(), patience=40)
"""Training recipe of the demo (random-init tiny CNN on 64 px crops, both models alike). The
synthetic fakes differ from their originals only by frame-to-frame flicker; with this recipe
cnn_lstm learned it (test AUC 0.92 vs frame 0.63, frame_mean 0.52, seed 0, 48 groups, 40 epochs),
while the loss sat at 0.69 for ~30 epochs first, so early stopping is effectively off. The
defaults of ``dfpipe train`` (last-step readout, flip augmentation, lr 1e-3) are for real data."""


def _stage(name: str, rc: int, *, fatal: bool) -> None:
    if rc == 0:
        log.info("[%s] done", name)
    elif fatal and rc >= 2:
        raise PipelineError(f"stage '{name}' could not run (exit {rc}); see the messages above")
    else:
        log.warning("[%s] finished with failed items (exit %d); continuing with the rest", name, rc)


def score_with_shipped(paths: tuple[str, ...], out_dir: Path, *, synthetic: bool) -> int | None:
    """Score ``paths`` with the shipped real model, if installed (None when it is not)."""
    shipped = release.default_checkpoint_path()
    if not shipped.is_file():
        log.info("the shipped real model (%s) is not installed: demo verdicts come from the "
                 "synthetic-trained models only", shipped)
        return None
    log.info("== verdicts of the shipped real model %s: %s ==", shipped.name, release.card_title())
    if synthetic:
        log.warning("these are synthetic clips (a rendered face with a flicker artefact); the "
                    "real model never saw anything like them, so its verdicts on them mean little")
    rc = scoring.run(config.ScoreConfig(inputs=paths, checkpoint=str(shipped),
                                        out=str(out_dir / "results.jsonl"),
                                        explain=str(out_dir / "evidence"), overwrite=True))
    _stage("score (shipped model)", rc, fatal=False)
    log.info("evidence sheets of the shipped model: %s", out_dir / "evidence")
    return rc


def run(cfg: config.RunConfig) -> int:
    """Run every stage in order; return 1 if any stage reported failed items."""
    work = Path(cfg.work_dir).resolve()
    manifests = work / "manifests"
    worst = 0

    inputs = tuple(cfg.inputs)
    if not inputs:
        data = work / "synthetic"
        log.info("no input given: generating a synthetic DFDC-like set in %s", data)
        rc = synth.run(config.SynthConfig(out=str(data), seed=cfg.seed, **DEMO_SYNTH))
        _stage("synth", rc, fatal=True)
        inputs = tuple(str(p) for p in sorted(data.glob("dfdc_train_part_*")))

    rc = extract.run(config.ExtractConfig(inputs=inputs, out=str(work / "faces"),
                                          manifest_dir=str(manifests), workers=cfg.workers))
    _stage("extract", rc, fatal=True)
    worst = max(worst, rc)

    rc = prepare.run(config.PrepareConfig(manifest_dir=str(manifests), seed=cfg.seed))
    _stage("prepare", rc, fatal=True)

    ckpts = []
    for model in DEMO_MODELS:
        run_dir = work / "checkpoints" / f"{model}_s{cfg.seed}"
        recipe = DEMO_TRAIN if not cfg.inputs else {}
        rc = training.run(config.TrainConfig(
            model=model, backbone=cfg.backbone, manifest_dir=str(manifests),
            out_dir=str(run_dir.parent), run_name=run_dir.name, epochs=cfg.epochs, seed=cfg.seed,
            resume=str(run_dir / "last.pt") if (run_dir / "last.pt").is_file() else None,
            **recipe,
        ))
        _stage(f"train {model}", rc, fatal=True)
        ckpts.append(str(run_dir / "best.pt"))

    report = work / "report"
    rc = evaluation.run(config.EvaluateConfig(checkpoint=tuple(ckpts), manifest_dir=str(manifests),
                                              out=str(report), seed=cfg.seed))
    _stage("evaluate", rc, fatal=True)

    split = read_manifest(manifest_path(manifests, "split"), "split")
    videos = read_manifest(manifest_path(manifests, "videos"), "videos").set_index("video_id")
    test = split[split["split"] == "test"].sort_values(["label", "video_id"])
    picks = list(test.groupby("label").head(2)["video_id"])
    paths = tuple(videos.loc[v, "path"] for v in picks)
    if paths:
        scores = work / "scores"
        data = "SYNTHETIC" if not cfg.inputs else "your"
        log.info("== verdicts of %s (trained by this run on its %s train split) ==",
                 Path(ckpts[0]).parent.name, data)
        # overwrite: a rerun may have trained the checkpoint further, and scoring a few videos
        # again is cheap (score refuses to resume another checkpoint's results)
        rc = scoring.run(config.ScoreConfig(inputs=paths, checkpoint=ckpts[0],
                                            out=str(scores / "results.jsonl"),
                                            explain=str(scores / "evidence"), overwrite=True))
        _stage("score", rc, fatal=False)
        worst = max(worst, rc)
        log.info("evidence sheets: %s", scores / "evidence")
        rc = score_with_shipped(paths, work / "scores_shipped", synthetic=not cfg.inputs)
        worst = max(worst, rc or 0)

    log.info("comparison report: %s", report / "report.md")
    return 1 if worst else 0

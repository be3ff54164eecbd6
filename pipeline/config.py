"""One frozen dataclass per stage: the single source of defaults.

The CLI builds its flags from these fields (``cli.add_arguments``) and turns parsed arguments
back into a config (``cli.from_namespace``); every stage writes its resolved config (``to_dict``)
beside its outputs. A field's ``metadata`` carries its help text and, optionally, ``positional``, ``choices``,
``short`` (a one-letter alias) or ``cli=False`` (not exposed as a flag). ``choices`` may be a
function returning the list (the model names come from the registry).

Unknown keys fail loudly (``from_dict``), as in nanoGPT's configurator.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.core.errors import ConfigError
from pipeline.release import checkpoint_help

T = TypeVar("T")

MIN_FRAMES = 2
"""The one minimum-frames rule: a video with fewer decodable frames is refused, by extract (a
``too_short`` row) and by score alike."""

DEFAULT_MANIFEST_DIR = "data_manifests"
DEFAULT_CHECKPOINT_DIR = "checkpoints"


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A config field with a default and CLI help text."""
    return field(default=default, metadata={"help": help, **meta})


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-types dict of a config (tuples become lists, paths strings: ``plaintypes.plain``)."""
    from pipeline.core.plaintypes import plain

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict; unknown keys raise ``ConfigError``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if is_tuple_type(hints[k]) and isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def is_tuple_type(tp: Any) -> bool:
    """True for a ``tuple[...]`` annotation (such fields take lists from JSON and the CLI)."""
    return typing.get_origin(tp) is tuple


# --------------------------------------------------------------------------------------------
# Stage configs. Each stage module's ``run(cfg)`` takes exactly one of these.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """``dfpipe synth``: a synthetic DFDC-like dataset with a real face (skimage astronaut)."""

    out: str = opt("", "output folder (parts with metadata.json + mp4 clips)", positional=True)
    n_originals: int = opt(6, "REAL original clips to make (one group = an original + its fakes)")
    fakes_per_original: int = opt(2, "FAKE clips made from each original")
    parts: int = opt(1, "dfdc_train_part_N folders; groups spread round-robin, fakes with originals")
    frames: int = opt(300, "frames per clip (DFDC: 300)")
    frames_jitter: int = opt(0, "clip length varies uniformly in frames +- this (per group)")
    outlier_share: float = opt(
        0.0, "share of groups whose length is 150 or 450 frames (outside 200-400; short/long alternate)"
    )
    width: int = opt(480, "frame width in pixels")
    height: int = opt(270, "frame height in pixels")
    fps: float = opt(30.0, "frames per second")
    two_face_share: float = opt(0.0, "share of groups where a second face appears in one stretch of frames")
    gap_share: float = opt(0.0, "share of groups with one stretch of frames without any face")
    spatial_strength: float = opt(
        0.0, "strength of the fakes' spatial artefact (colour shift + blur of the face; a "
        "single-frame cue, off by default)"
    )
    temporal_strength: float = opt(
        1.0, "0-1: share of the fakes' face-gain variance redrawn every frame (flicker; a single "
        "frame keeps the REAL distribution)"
    )
    codec: str = opt("auto", "video codec: auto (H.264 if available, else mp4v), h264 or mp4v",
                     choices=["auto", "h264", "mp4v"])
    seed: int = opt(0, "random seed: same seed, same dataset")


@dataclass(frozen=True)
class ExtractConfig:
    """``dfpipe extract``: raw videos -> face crops + videos/faces manifests."""

    inputs: tuple[str, ...] = opt((), "DFDC part folders, plain folders or video files",
                                  positional=True)
    out: str = opt("faces", "folder for face crops (one sub-folder per video)")
    manifest_dir: str = opt(DEFAULT_MANIFEST_DIR, "folder for the videos/faces manifests")
    device: str = opt("auto", "where MTCNN runs", choices=["auto", "cpu", "cuda"])
    decoder: str = opt("decord", "video decoder backend", choices=["decord", "pyav", "cv2"])
    engine: str = opt("pool", "where per-video work runs", choices=["inline", "pool", "ray"])
    workers: int = opt(0, "worker processes (0: as many as the usable CPU cores and memory allow)")
    address: str | None = opt(None, "Ray cluster address HOST:PORT (none: embedded local Ray)")
    max_in_flight: int = opt(0, "videos queued at once (0: 2 per worker)")
    detector_mode: str = opt("track", "track: full detection every --track-every frames and on "
                             "lost tracks or shot changes, each track's predicted box verified by "
                             "R-Net+O-Net between (faces verified on every frame, several times "
                             "faster); full: MTCNN detection on every frame (with --detect-every "
                             "K, every K-th and boxes carried between)",
                             choices=["full", "track"])
    track_every: int = opt(5, "track mode: full detection on every K-th frame (a face that "
                           "enters is found at most K-1 frames late)")
    search_every: int = opt(2, "track mode while no face is tracked: full detection on every "
                            "K-th frame")
    track_support: float = opt(0.5, "track mode: a face a full detection misses stays followed "
                               "(verified) only while more than this share of the scheduled full "
                               "detections since it was found found it (0: while R-Net+O-Net "
                               "confirm it)")
    detect_every: int = opt(1, "K > 1: run MTCNN on every K-th frame and carry boxes along "
                            "tracks between, unverified (in either --detector-mode)")
    scale: float = opt(0.0, "detection downscale factor (0: by resolution, see faces.auto_scale)")
    retry_scale: float = opt(2.0, "frames without a face are detected again at this many times "
                             "the scale, up to full resolution (1: no retry)")
    batch_size: int = opt(32, "frames per decode/MTCNN batch")
    min_face_prob: float = opt(0.9, "minimum MTCNN probability for a face")
    min_face_size: int = opt(20, "MTCNN minimum face size in detection pixels")
    margin: float = opt(0.3, "crop margin around the box as a share of its larger side "
                        "(negative: tighter than the box)")
    crop_size: int = opt(160, "crop size in pixels (square JPEG)")
    square: bool = opt(True, "square crop around the box's larger side (--no-square: the box "
                       "widened by the margin on each side, stretched to crop_size)")
    jpeg_quality: int = opt(95, "JPEG quality of the crops")
    iou_threshold: float = opt(0.3, "IoU that links a face to an existing track")
    from_faces: bool = opt(False, "the inputs are folders of pre-extracted faces to import, no "
                           "detection: one sub-folder per video (Kaggle deepfake-detection-faces) "
                           "or one image per video (Kaggle deepfake_faces: DIR/<id>.jpg)")
    metadata: str | None = opt(None, "metadata CSV for --from-faces (filename or videoname, "
                               "label, original)")
    overwrite: bool = opt(False, "redo videos that are already done")
    shard: str = opt("", "I/N: process only the videos of shard I of N (stable by video id; "
                     "array jobs: shards share --out, each writes its own --manifest-dir; "
                     "then dfpipe merge)")


@dataclass(frozen=True)
class MergeConfig:
    """``dfpipe merge``: the outputs of N shards -> one (extract manifests or score results)."""

    inputs: tuple[str, ...] = opt((), "manifest folders written by dfpipe extract --shard I/N, or "
                                  "results files written by dfpipe score --shard I/N",
                                  positional=True)
    manifest_dir: str = opt(DEFAULT_MANIFEST_DIR, "folder for the merged videos/faces manifests")
    out: str = opt("results.jsonl", "merged results file (.jsonl or .csv) for score shards")


@dataclass(frozen=True)
class ManifestConfig:
    """``dfpipe manifest show|export PATH``: look into a manifest (Parquet, or CSV of earlier
    versions): its schema, row count, metadata and first rows, or a CSV copy for people."""

    action: str = opt("", "show (schema, rows, metadata, head) or export (a CSV, --to)",
                      positional=True)
    path: str = opt("", "the manifest file (.parquet or .csv)", positional=True)
    to: str | None = opt(None, "export: the CSV file to write")
    rows: int = opt(5, "show: rows of the head")
    absolute_paths: bool = opt(False, "crop paths joined with the faces root (default: as stored, "
                               "relative to it)")


@dataclass(frozen=True)
class PrepareConfig:
    """``dfpipe prepare``: videos/faces manifests -> outliers, clips and split manifests."""

    manifest_dir: str = opt(DEFAULT_MANIFEST_DIR, "folder with the extract manifests; outputs go here too")
    min_faces: int = opt(200, "keep videos with at least this many face crops")
    max_faces: int = opt(400, "keep videos with at most this many face crops")
    orphan_fakes: str = opt("drop", "fakes whose original was filtered out", choices=["drop", "keep"])
    n_frames: int = opt(30, "frames per clip")
    stride: int = opt(10, "slot spacing for the 'stride' sampler (slots 0, 10, ..., 290)")
    sampler: str = opt("stride", "frame sampler", choices=["stride", "uniform"])
    short_clips: str = opt("drop", "clips that cannot give n_frames frames", choices=["drop", "pad"])
    test_share: float = opt(0.2, "share of groups for test")
    val_share: float = opt(0.2, "share of the remaining groups for validation")
    seed: int = opt(0, "split seed")
    merge_groups: str = opt("auto", "merge groups that share an identity (FF++ fakes "
                            "<target>_<source> tie both ids); off: one group per original",
                            choices=["auto", "off"])


def _trainable_models() -> list[str]:
    """The registry's trainable models (imported when a parser is built: torch is slow)."""
    from pipeline.models import trainable_models

    return trainable_models()


@dataclass(frozen=True)
class TrainConfig:
    """``dfpipe train``: clips + split manifests -> a checkpoint run folder."""

    model: str = opt("cnn_lstm", "model name from the registry", choices=_trainable_models)
    backbone: str = opt("tiny", "encoder backbone from the registry")
    preset: str | None = opt(None, "named model preset (e.g. seed_study)")
    pretrained: bool = opt(False, "load pretrained backbone weights (local file or torchvision cache)")
    weights: str | None = opt(None, "path of a backbone weights file")
    manifest_dir: str = opt(DEFAULT_MANIFEST_DIR, "folder with clips/split manifests")
    out_dir: str = opt(DEFAULT_CHECKPOINT_DIR, "folder for run folders")
    run_name: str | None = opt(None, "run folder name (default <model>_<time>_s<seed>)")
    image_size: int = opt(160, "input size in pixels")
    frame_index: int = opt(15, "slot used by the single-frame model (0-based; 15 = the 16th of 30)")
    lstm_hidden: int = opt(128, "LSTM hidden size")
    lstm_layers: int = opt(1, "LSTM layers")
    bidirectional: bool = opt(False, "bidirectional LSTM")
    lstm_sizes: tuple[int, ...] = opt((), "stacked LSTM sizes, one layer each (overrides --lstm-hidden/--lstm-layers)")
    dense: int = opt(0, "dense layer (ReLU) before the head, 0: none")
    readout: str = opt("last", "LSTM readout over valid slots", choices=["last", "mean"])
    dropout: float = opt(0.2, "dropout before the head")
    epochs: int = opt(10, "maximum epochs")
    batch_size: int = opt(8, "clips (or frames) per batch")
    lr: float = opt(1e-3, "AdamW learning rate")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    patience: int = opt(3, "early stopping: epochs without validation-loss improvement")
    balance: str = opt("weighted_loss", "class imbalance handling",
                       choices=["none", "weighted_loss", "balanced_sampler"])
    augment: tuple[str, ...] = opt(("flip",), "augmentations (same on every frame): flip, color, "
                                   "jpeg, blur, crop (a jittered 80-100 %% window), rescale (a smaller face "
                                   "upscaled back), compress (strong JPEG, quality 30-90), noise, "
                                   "gray, blend (30 %% of REAL clips become self-blended FAKEs), "
                                   "rotate (up to 15 degrees of head roll)")
    tta: str = opt("none", "frame model: test-time augmentation in every prediction after training "
                   "(validation, threshold, evaluation, scoring); flip: the mean logit of the "
                   "crop and its mirror image", choices=["none", "flip"])
    freeze_backbone_epochs: int = opt(0, "train the head only for this many epochs first (>= --epochs: "
                                      "the encoder stays frozen throughout)")
    train_blocks: int = opt(0, "fine-tune only the last N encoder stages (EfficientNet-Lite: stem, "
                            "16 blocks, head conv = 18 stages); the others stay fixed. 0: all")
    feature_cache: str | None = opt(None, "frame model, head only: encode each crop once with the "
                                    "frozen encoder, keep the features in this folder, train the "
                                    "head on them (augment: flip or nothing)")
    init_encoder: str | None = opt(None, "start the encoder from this trained checkpoint's encoder "
                                   "(a frame or cnn_lstm best.pt with the same --backbone; 'default': "
                                   "the shipped model's)")
    data_description: str = opt("", "what the training data is, in words, e.g. 'DFDC face crops "
                                "(dfdc_faces)': recorded in the checkpoint, shown in every verdict")
    workers: int = opt(0, "DataLoader workers")
    device: str = opt("auto", "training device", choices=["auto", "cpu", "cuda"])
    amp: bool = opt(True, "mixed precision on CUDA")
    resume: str | None = opt(None, "resume from this checkpoint (last.pt of a run)")
    allow_other_split: bool = opt(False, "--resume: continue although the split manifest is not "
                                  "the one the run was trained on (refused by default)")
    seed: int = opt(0, "random seed")
    max_steps: int = opt(0, "stop an epoch after this many steps (0: no limit; for smoke runs)")
    threads: int = opt(0, "torch CPU threads per process (0: CPU cores / processes)")
    threshold_rule: str = opt("balanced_accuracy", "validation threshold stored in the checkpoint",
                              choices=["balanced_accuracy", "fpr"])
    target_fpr: float = opt(0.1, "false-positive rate for --threshold-rule fpr")


@dataclass(frozen=True)
class ExportConfig:
    """``dfpipe export``: a trained checkpoint -> a small inference-only release file."""

    checkpoint: str = opt("", "checkpoint to export (best.pt of a run)")
    out: str = opt("", "release file to write (.pt)")
    card: str = opt("", "model card (Markdown file) stored in the release")
    margin: float = opt(0.0, "crop recipe: margin around the face box as a share of its larger side")
    size: int = opt(224, "crop recipe: crop side in pixels")
    square: bool = opt(True, "crop recipe: square box before the margin")
    jpeg_quality: int = opt(0, "crop recipe: JPEG quality of the training crops (0: not JPEG)")
    crop_source: str = opt("", "crop recipe: how it was chosen, in words (stored with it)")
    data_description: str = opt("", "what the training data is, in words (stored in train_data; "
                                "every verdict repeats it)")


@dataclass(frozen=True)
class EvaluateConfig:
    """``dfpipe evaluate``: checkpoints + clips/split manifests -> a comparison report."""

    checkpoint: tuple[str, ...] = opt((), "checkpoint files to compare (repeatable; 'default': the "
                                      "shipped model)")
    manifest_dir: str = opt(DEFAULT_MANIFEST_DIR, "folder with clips/split manifests")
    split: str = opt("test", "split to evaluate ('all': every labelled video of the manifests, "
                     "thresholds from the checkpoints)", choices=["train", "val", "test", "all"])
    out: str = opt("reports/latest", "report folder")
    threshold_rule: str = opt("balanced_accuracy", "how the validation threshold is chosen",
                              choices=["balanced_accuracy", "fpr"])
    target_fpr: float = opt(0.1, "false-positive rate for --threshold-rule fpr")
    bootstrap: int = opt(1000, "bootstrap resamples for the 95 percent intervals (grouped by original)")
    frame_level: bool = opt(True, "frame models: also per-frame AUC and the frame_mean aggregation")
    batch_size: int = opt(8, "clips (or frames) per prediction batch")
    workers: int = opt(0, "DataLoader workers")
    device: str = opt("auto", "device", choices=["auto", "cpu", "cuda"])
    seed: int = opt(0, "bootstrap seed")
    allow_other_split: bool = opt(False, "evaluate checkpoints on a split other than the one they "
                                  "were trained on (refused by default; the report then says so)")


@dataclass(frozen=True)
class ScoreConfig:
    """``dfpipe score``: videos and still images -> per-input verdicts (+ evidence sheets)."""

    inputs: tuple[str, ...] = opt((), "video or image files, or folders", positional=True)
    checkpoint: str = opt("", checkpoint_help())
    out: str = opt("results.jsonl", "results file (.jsonl or .csv)")
    explain: str | None = opt(None, "folder for evidence sheets (PNG + HTML per input)")
    engine: str = opt("inline", "where per-video work runs", choices=["inline", "pool", "ray"])
    workers: int = opt(0, "worker processes (0: as many as the usable CPU cores and memory allow)")
    address: str | None = opt(None, "Ray cluster address (none: embedded local Ray)")
    max_in_flight: int = opt(0, "videos queued at once (0: 2 per worker)")
    device: str = opt("auto", "device", choices=["auto", "cpu", "cuda"])
    threshold: float | None = opt(None, "decision threshold (default: the checkpoint's)")
    detect: str = opt("slots", "frames MTCNN runs on: 'slots' = only the slot frames of the "
                      "scoring windows (fast), 'all' = every frame (as the extract stage)",
                      choices=["slots", "all"])
    min_frames: int = opt(3, "a face track needs its face in at least this many sampled frames to "
                          "be scored (fewer: too_few_frames)")
    low_evidence_frames: int = opt(10, "a verdict resting on fewer sampled frames than this is "
                                   "flagged low_evidence")
    min_track_share: float = opt(0.3, "a face track is an identity (can decide the verdict) when it "
                                 "holds at least this share of the frames with a face, or is the "
                                 "longest track; shorter tracks are reported as 'brief'")
    decoder: str = opt("decord", "video decoder backend", choices=["decord", "pyav", "cv2"])
    overwrite: bool = opt(False, "rescore videos already in the results file")
    shard: str = opt("", "I/N: score only the videos of shard I of N (stable by path as given; "
                     "each shard writes its own --out; then dfpipe merge)")


@dataclass(frozen=True)
class ServeConfig:
    """``dfpipe serve``: the analysts' web page and JSON API."""

    checkpoint: str = opt("", checkpoint_help())
    host: str = opt("127.0.0.1", "bind address (loopback by default)")
    port: int = opt(8000, "port")
    max_upload_mb: int = opt(200, "largest accepted upload in MiB (413 beyond)")
    max_concurrent: int = opt(1, "videos scored at once")
    max_queue: int = opt(4, "requests waiting beyond that before 503")
    device: str = opt("auto", "device", choices=["auto", "cpu", "cuda"])


@dataclass(frozen=True)
class BenchConfig:
    """``dfpipe bench``: speed measurements (never part of the tests)."""

    video: str | None = opt(None, "10 s 1080p clip to measure (default: a generated one)")
    out: str = opt("benchmarks/results", "folder for the results JSON/Markdown")
    what: tuple[str, ...] = opt(("decode", "extract", "score", "scaling", "train"),
                                "which benchmarks to run (also: crop-margin, the crop recipe of "
                                "dfdc_faces vs ours; not a speed measurement; scale, prepare "
                                "and the training index on generated DFDC-size manifests; "
                                "extract-agreement, track vs full detection on every clip of "
                                "--samples, not a speed measurement either; samples, every clip of "
                                "--samples scored by --checkpoint: per-clip verdicts, AUC and the "
                                "REAL false-alarm rate with intervals)")
    videos: int = opt(120_000, "scale: videos of the generated manifests (~300 face rows each)")
    repeats: int = opt(3, "repetitions per measurement")
    scaling_videos: int = opt(4, "copies of the video extracted per scaling measurement")
    backbones: tuple[str, ...] = opt(("tiny", "mobilenet_v3_small", "resnet18", "efficientnet_b0",
                                      "inception_resnet_v1"), "backbones for the training benchmark")
    device: str = opt("cpu", "device for extract/score/train measurements",
                      choices=["auto", "cpu", "cuda"])
    checkpoint: str | None = opt(None, "crop-margin: also score the labelled real sample clips at "
                                 "each margin with this checkpoint ('default': the shipped model); "
                                 "samples: the checkpoint to check (none: the shipped model); "
                                 "score: measure this checkpoint as dfpipe score runs it, "
                                 "interleaved with the decode floor and a float32 run")
    margins: tuple[float, ...] = opt((-0.15, -0.1, -0.075, -0.05, 0.0, 0.05, 0.1, 0.2, 0.3),
                                     "crop-margin: margins to compare (negative: tighter than the box)")
    samples: str = opt("../shared/data/real_samples", "crop-margin, extract-agreement, samples: the real "
                       "sample clips folder")
    faces_dataset: str = opt("../shared/data/dfdc_faces", "crop-margin: the face-crop data set "
                             "(faces_224/ + metadata.csv) whose crops are matched")


@dataclass(frozen=True)
class RunConfig:
    """``dfpipe run``: the whole pipeline end to end (synthetic data when no input is given)."""

    inputs: tuple[str, ...] = opt((), "DFDC part folders (none: a generated synthetic set)",
                                  positional=True, optional=True)
    work_dir: str = opt("runs/demo", "folder for everything this run writes")
    epochs: int = opt(40, "training epochs per model")
    backbone: str = opt("tiny", "encoder backbone")
    workers: int = opt(0, "extraction workers (0: as many as the usable CPU cores and memory allow)")
    seed: int = opt(0, "seed for data generation, split and training")

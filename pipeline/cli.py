"""``dfpipe``: the only place that reads argv. One subcommand per stage.

Each subcommand's flags come from its stage config dataclass (``pipeline.config``: one flag per
field, built by ``add_arguments`` and read back by ``from_namespace``); the handler
is ``run(cfg) -> int`` in the stage module, imported only when that subcommand runs so that
``dfpipe --help`` stays fast. Exit status (``EXIT_STATUS``): 0 all good, 1 some items failed
(the stage says which), 2 the command could not run (one-line reason), 3 dfpipe crashed (an
unexpected exception: a bug, logged with its traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pipeline import __version__, config
from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline")
T = TypeVar("T")

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_CANNOT_RUN, EXIT_CRASHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STATUS = f"""exit status:
  {EXIT_OK}    everything worked (no_face / too_few_frames are answers, not failures)
  {EXIT_ITEMS_FAILED}    the command ran, but some items failed (their rows say why)
  {EXIT_CANNOT_RUN}    the command could not run (bad config, checkpoint or input; one-line reason)
  {EXIT_CRASHED}    dfpipe crashed: an unexpected error (a bug; the traceback is logged)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); finished items are kept, rerun to resume"""

# name -> (config class, "module:function", one-line help)
COMMANDS: dict[str, tuple[type, str, str]] = {
    "synth": (config.SynthConfig, "pipeline.synth.dataset:run", "write a synthetic DFDC-like dataset"),
    "extract": (config.ExtractConfig, "pipeline.extract.stage:run",
                "detect faces (MTCNN) in raw videos -> crops + videos/faces manifests"),
    "merge": (config.MergeConfig, "pipeline.cli:merge",
              "merge the manifests of extract shards (--shard I/N) into one manifest folder"),
    "manifest": (config.ManifestConfig, "pipeline.cli:manifest",
                 "show a manifest (schema, rows, metadata, head) or export it as CSV"),
    "prepare": (config.PrepareConfig, "pipeline.prepare.stage:run",
                "filter 200-400 face frames, subsample 30 frames, grouped train/val/test split"),
    "train": (config.TrainConfig, "pipeline.train.stage:run",
              "train a registered model (--model) -> checkpoints/<run>/"),
    "evaluate": (config.EvaluateConfig, "pipeline.cli:evaluate",
                 "compare checkpoints on one split -> report (metrics, plots)"),
    "export": (config.ExportConfig, "pipeline.models.checkpoint:run_export",
               "a trained checkpoint -> a small inference-only release file (fp16, card, crop recipe)"),
    "score": (config.ScoreConfig, "pipeline.cli:score",
              "score whole videos -> verdicts (+ evidence sheets with --explain)"),
    "serve": (config.ServeConfig, "pipeline.service.app:run",
              "web page + JSON API for analysts (loopback by default)"),
    "bench": (config.BenchConfig, "pipeline.cli:bench", "speed benchmarks (never part of tests)"),
    "run": (config.RunConfig, "pipeline.run:run",
            "the whole pipeline end to end (synthetic data when no input is given)"),
}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for ``X | None`` annotations."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one CLI argument per field of the config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        tp, _optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "")
        kw: dict[str, Any] = {"help": help_text}
        if callable(meta.get("choices")):  # read from a registry when used, not at build time
            kw.update(choices=_LazyChoices(meta["choices"]), metavar=f.name.upper())
            help_text = kw["help"] = f"{help_text} (one of: %(choices)s)"
        elif "choices" in meta:
            kw["choices"] = meta["choices"]
        if config.is_tuple_type(tp):
            inner = typing.get_args(tp)[0]
            kw.update(nargs="+" if meta.get("positional") else "*", type=inner)
            if not meta.get("positional"):
                kw["action"] = _ExtendAction
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp
        if meta.get("positional"):
            if not config.is_tuple_type(tp) and default is not None and default != "":
                kw["nargs"] = "?"
            if config.is_tuple_type(tp) and (default or meta.get("optional")):
                kw["nargs"] = "*"
            parser.add_argument(f.name, default=default, **kw)
            continue
        if default is not None and help_text:
            kw["help"] = f"{help_text} (default: {default if not config.is_tuple_type(tp) else ' '.join(map(str, default))})"
        flags = ["--" + f.name.replace("_", "-")]
        if meta.get("short"):
            flags.insert(0, "-" + meta["short"])
        parser.add_argument(*flags, dest=f.name, default=default, **kw)


class _LazyChoices:
    """CLI choices asked of a function each time they are used (``dfpipe --help`` stays fast:
    the model registry, and torch with it, loads only when a value is checked or listed)."""

    def __init__(self, fn: typing.Callable[[], list[str]]) -> None:
        self.fn = fn

    def __contains__(self, value: object) -> bool:
        return value in self.fn()

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self.fn())


class _ExtendAction(argparse.Action):
    """``--x a b --x c`` -> (a, b, c): the first use replaces the default, later uses extend."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            current = []
        setattr(namespace, self.dest, [*current, *values])


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """Build ``cls`` from parsed arguments (fields not on the CLI keep their defaults)."""
    data = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if hasattr(ns, f.name):
            v = getattr(ns, f.name)
            if config.is_tuple_type(_base_type(hints[f.name])[0]) and v is not None:
                v = tuple(v)
            data[f.name] = v
    return cls(**data)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and by the CLI tests)."""
    parser = argparse.ArgumentParser(
        prog="dfpipe",
        description="Video-level deepfake detection: raw DFDC-style videos -> per-video verdicts.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dfpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (cls, _target, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=cls.__doc__, epilog=EXIT_STATUS,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p, cls)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is *now* (not at set-up time), so
    a replaced or closed stderr (tests capturing output, notebooks) never breaks logging."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """Log to stderr; -v/-q move the level by one step each."""
    level = logging.INFO + 10 * (quiet - verbose)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    logging.basicConfig(level=max(logging.DEBUG, min(level, logging.CRITICAL)),
                        handlers=[handler], force=True)


def evaluate(cfg: config.EvaluateConfig) -> int:
    """``dfpipe evaluate``: write the report, print its short summary on stdout."""
    from pipeline.evaluate import stage as evaluation

    summary = evaluation.evaluate(cfg)
    print("\n".join(evaluation.summary_lines(summary, cfg.out)))
    return EXIT_OK


def score(cfg: config.ScoreConfig) -> int:
    """``dfpipe score``: the batch, then one ``path<TAB>verdict`` line per input on stdout."""
    from pipeline.score import batch as score_batch

    rc, rows = score_batch.score_all(cfg)
    if rows:
        print("\n".join(score_batch.verdict_lines(rows)))
    return rc


def bench(cfg: config.BenchConfig) -> int:
    """``dfpipe bench``: run the benchmarks, print the Markdown tables it wrote."""
    from pathlib import Path

    from pipeline.bench import run as bench_mod

    rc = bench_mod.run(cfg)
    print((Path(cfg.out) / "bench.md").read_text())
    return rc


def merge(cfg: config.MergeConfig) -> int:
    """``dfpipe merge``: shard outputs -> one (results files: ``score.merge``; manifest folders:
    ``extract.merge``); exit status 1 when a merged video failed."""
    from pathlib import Path

    from pipeline.core.errors import ConfigError

    files = [Path(p) for p in cfg.inputs]
    if files and all(f.suffix in (".jsonl", ".csv") for f in files):
        from pipeline.score.batch import OUTCOME_STATUSES, config_path
        from pipeline.score.merge import merge_scores

        for f in files:  # a shard that got no video has its config sidecar and no rows
            if not f.is_file() and not config_path(f).is_file():
                raise ConfigError(f"merge: {f}: results file not found")
        counts = merge_scores(files, Path(cfg.out))
        log.info("merged %d score shards: %d videos (%s) -> %s", counts["shards"],
                 counts["videos"], counts["status"], cfg.out)
        return 1 if any(s not in OUTCOME_STATUSES for s in counts["status"]) else 0
    from pipeline.extract.merge import merge_extract
    from pipeline.extract.worker import OK_STATUSES

    for d in files:
        if not d.is_dir():
            raise ConfigError(f"merge: {d}: folder not found")
    counts = merge_extract(files, Path(cfg.manifest_dir))
    log.info("merged %d shards: %d videos (%s), %d faces -> %s", counts["shards"],
             counts["videos"], ", ".join(f"{k} {v}" for k, v in counts["status"].items()),
             counts["faces"], cfg.manifest_dir)
    return 1 if any(s not in OK_STATUSES for s in counts["status"]) else 0


def manifest(cfg: config.ManifestConfig) -> int:
    """``dfpipe manifest show|export``: ``show`` prints the description on stdout."""
    from pipeline.io import manifest as manifest_mod
    from pipeline.io import manifest_cli

    if cfg.action == "show":
        path = manifest_mod.resolve_existing(cfg.path)
        if path.is_file():
            print(manifest_cli.describe(path, cfg.rows, cfg.absolute_paths))
            return EXIT_OK
    return manifest_cli.run(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dfpipe``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    cls, target, _ = COMMANDS[args.command]
    try:
        cfg = from_namespace(cls, args)
        module_name, func_name = target.split(":")
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(cfg) or EXIT_OK)
    except PipelineError as e:
        log.error("%s", e)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        log.error("interrupted; finished items are kept, rerun to resume")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a bug: say so with its own exit status
        log.error("dfpipe %s crashed: %s: %s", args.command, type(e).__name__,
                  " ".join(str(e).split())[:300], exc_info=True)
        return EXIT_CRASHED


if __name__ == "__main__":
    sys.exit(main())

"""Every ``dfpipe ...`` example in README.md's code blocks parses with the real CLI parser.

Parse only, never run: the examples name data and checkpoints that need not exist here. An
example counts when a command segment runs ``dfpipe`` (any path to it) or ``python -m pipeline``
(also behind ``torchrun ... -m pipeline``); other commands (make, curl, pip) are skipped. A
bare ``...`` token is the README's "more flags here" and is left out.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from pipeline import cli

README = Path(__file__).resolve().parents[1] / "README.md"
OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}


def code_blocks(text: str) -> list[str]:
    """Contents of the fenced code blocks of a Markdown text."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """Shell lines of a block, backslash continuations joined, prompts (``$ ``) dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    return [re.sub(r"^\$\s+", "", ln.strip()) for ln in joined.splitlines() if ln.strip()]


def dfpipe_args(line: str) -> list[list[str]]:
    """The argument lists given to dfpipe in one shell line (comments and operators handled)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    segments, cur = [], []
    for tok in lex:
        if tok in OPERATORS:
            segments.append(cur)
            cur = []
        elif tok != "...":
            cur.append(tok)
    segments.append(cur)
    out = []
    for seg in segments:
        for i, tok in enumerate(seg):
            if Path(tok).name == "dfpipe":
                out.append(seg[i + 1:])
                break
            if tok == "-m" and i + 1 < len(seg) and seg[i + 1] == "pipeline":
                out.append(seg[i + 2:])
                break
    return out


def readme_examples() -> list[tuple[str, list[str]]]:
    return [(line, args) for block in code_blocks(README.read_text(encoding="utf-8"))
            for line in commands(block) for args in dfpipe_args(line)]


def test_readme_has_dfpipe_examples():
    examples = readme_examples()
    assert len(examples) >= 10
    assert {args[0] for _, args in examples if args} >= {"extract", "prepare", "train", "score"}


def test_the_extractor_itself():
    assert dfpipe_args("OMP_NUM_THREADS=1 .venv/bin/dfpipe score a.mp4 --out r.csv  # note") == [
        ["score", "a.mp4", "--out", "r.csv"]]
    assert dfpipe_args("torchrun --nproc-per-node 2 -m pipeline train --epochs 3 && make x") == [
        ["train", "--epochs", "3"]]
    assert dfpipe_args("curl --data-binary @clip.mp4 'http://127.0.0.1:8000/score'") == []
    assert commands("dfpipe train \\\n   --epochs 3\n$ dfpipe score x") == [
        "dfpipe train --epochs 3", "dfpipe score x"]


@pytest.mark.parametrize("line,args", readme_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_readme_example_parses(line, args):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(args)
    except SystemExit as e:  # argparse: 0 for --help/--version, 2 for a bad example
        assert e.code == 0, f"README example does not parse: {line}\n{err.getvalue().strip()}"

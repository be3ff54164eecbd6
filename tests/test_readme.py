"""README.md and docs/*.md: their ``dfpipe ...`` examples parse, their links resolve.

Examples: every ``dfpipe ...`` example in the shell code blocks (``bash``, ``sh``, ``console``)
parses with the real CLI parser. Every fence names its language (diagrams and trees: ``text``)
and no other block holds a ``dfpipe`` line, so no example escapes the check. Parse only, never
run: the examples name data and checkpoints that need not exist here. An example counts when a
command segment runs ``dfpipe`` (any path to it) or ``python -m pipeline`` (also behind
``torchrun ... -m pipeline``); other commands (make, curl, pip) are skipped. A bare ``...``
token is the docs' "more flags here" and is left out.

Links: every relative link (``[text](path)``, ``[text](path#anchor)``, ``[text](#anchor)``)
outside code points at a file of the repository, and its anchor at a heading of that file (the
anchor GitHub makes of it). README.md stays within 300 lines and links every docs page.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from pipeline import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 300
OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}
SHELL = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", flags=re.M | re.S)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def code_blocks(text: str) -> list[str]:
    """Contents of the fenced code blocks of a Markdown text."""
    return [body for _, _, body in code_blocks_at(text)]


def code_blocks_at(text: str) -> list[tuple[int, str, str]]:
    """(line number of the first content line, language, content) of each fenced code block."""
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(1).strip(), m.group(2))
            for m in FENCE.finditer(text)]


def commands_at(block: str, first_line: int = 1) -> list[tuple[int, str]]:
    """(line number, shell line) of a block: continuations joined, prompts (``$ ``) dropped."""
    out, start, parts = [], None, []
    for n, raw in enumerate(block.splitlines(), first_line):
        if start is None:
            start = n
        cont = re.search(r"\s*\\$", raw)
        parts.append(raw[:cont.start()] if cont else raw)
        if not cont:
            line = re.sub(r"^\$\s+", "", " ".join(p.strip() for p in parts).strip())
            if line:
                out.append((start, line))
            start, parts = None, []
    if parts:
        line = " ".join(p.strip() for p in parts).strip()
        if line:
            out.append((start, line))
    return out


def commands(block: str) -> list[str]:
    """Shell lines of a block, backslash continuations joined, prompts (``$ ``) dropped."""
    return [line for _, line in commands_at(block)]


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


def examples(page: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, shell line, dfpipe arguments) of every dfpipe example of one page."""
    blocks = code_blocks_at(page.read_text(encoding="utf-8"))
    return [(n, line, args) for first, lang, block in blocks if lang in SHELL
            for n, line in commands_at(block, first) for args in dfpipe_args(line)]


def readme_examples() -> list[tuple[str, list[str]]]:
    return [(line, args) for _, line, args in examples(README)]


def all_examples() -> list:
    return [pytest.param(line, args, id=f"{rel(page)}:{n}: {line}")
            for page in PAGES for n, line, args in examples(page)]


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (fences keep their lines)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    span = r"`[^`\n]*(?:\n[^`\n]+)*`"  # an inline code span, possibly wrapped over lines
    return re.sub(span, lambda m: "code" + "\n" * m.group(0).count("\n"), text)


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of each inline Markdown link outside code."""
    body = prose(text)
    return [(body.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)", body)]


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) and not target.startswith("//")


def slug(heading: str) -> str:
    """The anchor GitHub makes of a heading's text (before de-duplication)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def all_links() -> list:
    return [pytest.param(page, n, target, id=f"{rel(page)}:{n}: {target}")
            for page in PAGES for n, target in links(page.read_text(encoding="utf-8"))
            if is_relative(target)]


def test_readme_has_dfpipe_examples():
    every = [args for page in PAGES for _, _, args in examples(page)]
    assert len(every) >= 10
    assert {args[0] for args in every if args} >= {"extract", "prepare", "train", "score"}
    tour = {args[0] for _, args in readme_examples() if args}
    assert tour >= {"extract", "prepare", "train", "evaluate", "score", "serve"}


def test_the_extractor_itself():
    assert dfpipe_args("OMP_NUM_THREADS=1 .venv/bin/dfpipe score a.mp4 --out r.csv  # note") == [
        ["score", "a.mp4", "--out", "r.csv"]]
    assert dfpipe_args("torchrun --nproc-per-node 2 -m pipeline train --epochs 3 && make x") == [
        ["train", "--epochs", "3"]]
    assert dfpipe_args("curl --data-binary @clip.mp4 'http://127.0.0.1:8000/score'") == []
    assert commands("dfpipe train \\\n   --epochs 3\n$ dfpipe score x") == [
        "dfpipe train --epochs 3", "dfpipe score x"]
    text = "# T\n\n```bash\ndfpipe a \\\n  --b\n\n$ dfpipe c\n```\n"
    found = [(n, lang, line) for first, lang, block in code_blocks_at(text)
             for n, line in commands_at(block, first)]
    assert found == [(4, "bash", "dfpipe a --b"), (7, "bash", "dfpipe c")]


def test_the_link_checker_itself():
    text = ("# `dfpipe score`: verdicts (for analysts)\n## Scale: 120,000 videos\n## A\n## A\n"
            "see [x](docs/a.md#b) and `[not](a link)`\n```text\n[nor](this.md)\n```\n"
            "[y](#a-1) [z](http://e.org)\n")
    assert anchors(text) == {"dfpipe-score-verdicts-for-analysts", "scale-120000-videos",
                             "a", "a-1"}
    assert links(text) == [(5, "docs/a.md#b"), (9, "#a-1"), (9, "http://e.org")]
    assert [is_relative(t) for _, t in links(text)] == [True, True, False]
    assert slug("`dfpipe bench --what scale` (x)") == "dfpipe-bench---what-scale-x"


@pytest.mark.parametrize("line,args", all_examples())
def test_readme_example_parses(line, args):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(args)
    except SystemExit as e:  # argparse: 0 for --help/--version, 2 for a bad example
        assert e.code == 0, f"example does not parse: {line}\n{err.getvalue().strip()}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_code_blocks_are_labelled(page):
    for first, lang, block in code_blocks_at(page.read_text(encoding="utf-8")):
        where = f"{rel(page)}:{first - 1}"
        assert lang, f"{where}: a fence without a language (bash: commands, text: diagrams)"
        if lang not in SHELL:
            hidden = [ln for ln in block.splitlines()
                      if re.match(r"^\s*(\$\s+)?(\S*/)?dfpipe\s", ln)]
            assert not hidden, f"{where}: dfpipe lines in a {lang} block go unchecked: {hidden}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move reference to docs/")


@pytest.mark.parametrize("page,lineno,target", all_links())
def test_relative_link_resolves(page, lineno, target):
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    where = f"{rel(page)}:{lineno}: link {target}"
    assert dest.exists(), f"{where}: no such file {dest}"
    if anchor and dest.suffix == ".md":
        found = anchors(dest.read_text(encoding="utf-8"))
        assert anchor in found, f"{where}: no heading with anchor #{anchor} in {rel(dest)}"


def test_every_docs_page_is_linked_from_readme():
    assert DOCS, "no docs/*.md"
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for _, t in links(README.read_text(encoding="utf-8")) if is_relative(t)}
    missing = [rel(p) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"

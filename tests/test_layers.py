"""Issue #24: the package's import graph has no cycle and only points down the layers.

The graph is read from the source with ``ast`` (every ``import`` and ``from ... import``, also
those inside functions: a lazy import is still a dependency). A module may import its own layer
and the layers below it, never one above; ``docs/layout.md`` lists the same layers.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

LAYERS = [
    ("core", ["pipeline", "pipeline.core", "pipeline.release"]),
    ("io", ["pipeline.io"]),
    ("engines", ["pipeline.engines"]),
    ("models", ["pipeline.models"]),
    ("stats", ["pipeline.stats"]),
    ("config", ["pipeline.config"]),
    ("synth", ["pipeline.synth"]),
    ("faces", ["pipeline.faces"]),
    ("extract", ["pipeline.extract"]),
    ("prepare", ["pipeline.prepare"]),
    ("train", ["pipeline.train"]),
    ("evaluate", ["pipeline.evaluate"]),
    ("score", ["pipeline.score"]),
    ("service", ["pipeline.service"]),
    ("bench", ["pipeline.bench"]),
    ("commands", ["pipeline.cli", "pipeline.run", "pipeline.__main__"]),
]
"""Bottom to top."""


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports: each target's longest known prefix
    (``from pipeline.faces import detect`` imports the package ``pipeline.faces`` and its module
    ``detect``)."""
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = base.split(".")[: len(base.split(".")) - (node.level - 1)]
                mod = ".".join(up + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.split(".")[0] == "pipeline":
                found.add(t)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer_of(name: str) -> int:
    """Index in ``LAYERS`` of the layer holding module ``name`` (the longest matching prefix)."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (name == pre or name.startswith(pre + ".")) and len(pre) > best:
                best, rank = len(pre), i
    if rank is None:
        raise AssertionError(f"{name}: in no layer of tests/test_layers.py LAYERS")
    return rank


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_source():
    g = graph()
    assert len(g) > 60
    assert "pipeline.score.scorer" in g["pipeline.score.batch"]  # a lazy import counts
    assert "pipeline.io.video" in g["pipeline.faces.video"]


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_down(name):
    g = graph()
    up = [t for t in sorted(g[name]) if layer_of(t) > layer_of(name)]
    assert not up, (f"{name} (layer {LAYERS[layer_of(name)][0]}) imports upper layers: "
                    + ", ".join(f"{t} ({LAYERS[layer_of(t)][0]})" for t in up))

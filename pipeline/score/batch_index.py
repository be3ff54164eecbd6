"""Index page of a scored batch: result rows -> ``<explain>/index.html`` (one self-contained page).

``dfpipe score DIR --explain OUT`` writes ``OUT/index.html``: the model's provenance line (and a
red warning when it was trained on synthetic data), then one row per input (file, verdict,
p_fake, frames used, status, reason) linking the input's evidence sheet. Clicking a column header
sorts by it (a few lines of inline JavaScript: no CDN, the page works offline). The page is
rewritten atomically while the batch runs (at most every ``every_s`` seconds) and at the end, so
a killed run leaves a whole page of what was finished, and a resumed one rewrites it whole.
"""

from __future__ import annotations

import html
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.fsutil import atomic_write_text
from pipeline.score.explain import provenance_line, synthetic_warning

log = logging.getLogger(__name__)

INDEX_NAME = "index.html"
COLUMNS = ("file", "verdict", "p_fake", "frames used", "status", "reason")

_SORT_JS = """
document.querySelectorAll('th[data-col]').forEach(th => th.addEventListener('click', () => {
  const body = document.querySelector('#batch tbody'), col = +th.dataset.col;
  const dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
  document.querySelectorAll('th[data-col]').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
  const key = tr => tr.children[col].dataset.sort ?? tr.children[col].textContent;
  const num = th.dataset.type === 'number';
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return dir * (num ? (parseFloat(x) || -1) - (parseFloat(y) || -1) : x.localeCompare(y)); })
    .forEach(tr => body.appendChild(tr));
}));
"""


def sheet_link(row: dict[str, Any], out_dir: Path) -> str | None:
    """The row's evidence sheet (HTML page, else PNG) relative to ``out_dir``; None if none."""
    for key in ("evidence_html", "evidence_png"):
        target = row.get(key)
        if target:
            return Path(os.path.relpath(Path(target).resolve(), out_dir.resolve())).as_posix()
    return None


def render_index(rows: Iterable[dict[str, Any]], out_dir: str | os.PathLike,
                 title: str = "dfpipe batch") -> str:
    """The index page's HTML for result ``rows`` (``dfpipe score`` rows, in input order)."""
    e = html.escape
    out_dir = Path(out_dir)
    rows = list(rows)
    cards: list[dict[str, Any]] = []
    for r in rows:
        ck = r.get("checkpoint")
        if ck and ck not in cards:
            cards.append(ck)
    head = "".join(f"<p class=\"provenance\">{e(provenance_line(c))}</p>" for c in cards)
    if any(synthetic_warning(c) for c in cards):
        head += (f'<p class="warning">{e(next(w for c in cards if (w := synthetic_warning(c))))}'
                 "</p>")
    body = []
    for r in rows:
        p = r.get("p_fake")
        link = sheet_link(r, out_dir)
        name = e(str(r.get("path", "")))
        cell = f'<a href="{e(link)}">{name}</a>' if link else name
        verdict = r.get("label") or "-"
        body.append(
            f'<tr class="{e(str(r.get("status", "")))}"><td>{cell}</td>'
            f'<td class="{e(verdict)}">{e(verdict)}</td>'
            f'<td data-sort="{"" if p is None else f"{p:.6f}"}">'
            f'{"-" if p is None else f"{p:.3f}"}</td>'
            f'<td data-sort="{int(r.get("frames_used") or 0)}">{int(r.get("frames_used") or 0)}</td>'
            f'<td>{e(str(r.get("status", "")))}</td><td>{e(str(r.get("reason") or ""))}</td></tr>')
    numeric = {"p_fake", "frames used"}
    ths = "".join(f'<th data-col="{i}" data-type="{"number" if c in numeric else "text"}" '
                  f'title="sort by {c}">{c}</th>' for i, c in enumerate(COLUMNS))
    counts: dict[str, int] = {}
    for r in rows:
        key = r.get("label") or r.get("status", "")
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{e(title)}: {len(rows)} input(s)</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}}
td{{max-width:36rem;overflow-wrap:anywhere}} th{{cursor:pointer;background:#f3f3f3}}
th[aria-sort=ascending]::after{{content:" \\25B2"}} th[aria-sort=descending]::after{{content:" \\25BC"}}
.FAKE{{color:#b00020;font-weight:700}} .REAL{{color:#1b7f3b;font-weight:700}}
.warning{{background:#b00020;color:#fff;font-weight:700;padding:.5rem}}</style></head><body>
<h1>{e(title)}</h1>
{head}
<p>{len(rows)} input(s): {e(summary)}. Click a column header to sort.</p>
<table id="batch"><thead><tr>{ths}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<script>{_SORT_JS}</script></body></html>
"""


def write_index(rows: Iterable[dict[str, Any]], out_dir: str | os.PathLike,
                title: str = "dfpipe batch") -> Path:
    """Write ``out_dir/index.html`` atomically; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / INDEX_NAME
    atomic_write_text(path, render_index(rows, out_dir, title))
    return path


class BatchIndex:
    """Keeps ``index.html`` of a running batch current: ``add`` each finished row (the page is
    rewritten at most every ``every_s`` seconds), ``write`` the final rows at the end."""

    def __init__(self, out_dir: str | os.PathLike, order: list[str],
                 done: dict[str, dict[str, Any]], every_s: float = 2.0,
                 title: str = "dfpipe batch") -> None:
        self.out_dir, self.order, self.every_s, self.title = Path(out_dir), order, every_s, title
        self.done = dict(done)
        self._last = 0.0

    def add(self, row: dict[str, Any]) -> None:
        """One more finished row; rewrite the page if ``every_s`` has passed."""
        self.done[str(row.get("path"))] = row
        if time.monotonic() - self._last >= self.every_s:
            self._write([self.done[p] for p in self.order if p in self.done])

    def write(self, rows: list[dict[str, Any]]) -> Path:
        """The final page of ``rows``."""
        return self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> Path:
        self._last = time.monotonic()
        path = write_index(rows, self.out_dir, self.title)
        log.debug("%s: %d row(s)", path, len(rows))
        return path

"""The batch index page (issue #15): ``dfpipe score DIR --explain OUT`` writes
``OUT/index.html``: one row per input, sortable headers, each row linking its sheet."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.score.batch_index import INDEX_NAME, BatchIndex, render_index, write_index

CK = {"id": "0123456789ab", "model": "cnn_lstm", "backbone": "tiny",
      "trained_on": "SYNTHETIC data: 8 REAL / 8 FAKE training videos", "card_title": ""}


class _Table(HTMLParser):
    """Rows of ``#batch`` (cell texts), the links in them, headers, scripts."""

    def __init__(self):
        super().__init__()
        self.rows, self.links, self.headers, self.scripts = [], [], [], []
        self._cell = None
        self._in_script = False
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
            if tag == "th":
                self.headers.append(a)
        elif tag == "a" and self._in_body:
            self.links.append(a["href"])
        elif tag == "script":
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "td" and self.rows:
            self.rows[-1].append(self._cell.strip())
        if tag in ("td", "th"):
            self._cell = None
        if tag == "script":
            self._in_script = False
        if tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_script:
            self.scripts.append(data)


def _parse(text: str) -> _Table:
    t = _Table()
    t.feed(text)
    return t


def _rows(out: Path) -> list[dict]:
    (out / "ev").mkdir(parents=True)
    (out / "ev" / "a-1.html").write_text("sheet")
    return [
        {"path": "in/a.mp4", "status": "ok", "label": "FAKE", "p_fake": 0.91, "frames_used": 30,
         "reason": "", "evidence_html": str(out / "ev" / "a-1.html"), "checkpoint": CK},
        {"path": "in/b <c>.mp4", "status": "no_face", "label": None, "p_fake": None,
         "frames_used": 0, "reason": "in/b <c>.mp4: no face found", "checkpoint": CK},
        {"path": "in/d.mp4", "status": "ok", "label": "REAL", "p_fake": 0.12, "frames_used": 12,
         "reason": "", "evidence_png": str(out / "ev" / "d-2.png"), "checkpoint": CK},
    ]


def test_index_rows_links_and_sort(tmp_path):
    rows = _rows(tmp_path)
    t = _parse(render_index(rows, tmp_path / "ev"))
    assert t.rows == [
        ["in/a.mp4", "FAKE", "0.910", "30", "ok", ""],
        ["in/b <c>.mp4", "-", "-", "0", "no_face", "in/b <c>.mp4: no face found"],
        ["in/d.mp4", "REAL", "0.120", "12", "ok", ""],
    ]
    assert t.links == ["a-1.html", "d-2.png"]  # relative to the index page: the folder moves
    assert [h["data-col"] for h in t.headers] == ["0", "1", "2", "3", "4", "5"]
    assert [h["data-type"] for h in t.headers] == ["text", "text", "number", "number", "text", "text"]
    script = "".join(t.scripts)
    assert "addEventListener('click'" in script and ".sort(" in script
    assert "http" not in script  # nothing fetched from elsewhere


def test_index_states_provenance_and_warning(tmp_path):
    page = render_index(_rows(tmp_path), tmp_path)
    assert "checkpoint 0123456789ab, trained on SYNTHETIC data" in page
    assert "WARNING: this model was trained on SYNTHETIC data" in page
    assert "&lt;c&gt;" in page and "<c>" not in page  # names are escaped


def test_batch_index_is_rewritten_as_the_batch_goes(tmp_path):
    rows = _rows(tmp_path)
    index = BatchIndex(tmp_path / "ev", [r["path"] for r in rows], {}, every_s=0.0)
    index.add(rows[2])
    assert len(_parse((tmp_path / "ev" / INDEX_NAME).read_text()).rows) == 1
    index.add(rows[0])
    first = _parse((tmp_path / "ev" / INDEX_NAME).read_text())
    assert [r[0] for r in first.rows] == ["in/a.mp4", "in/d.mp4"]  # input order, not finish order
    write_index(rows, tmp_path / "ev")
    assert len(_parse((tmp_path / "ev" / INDEX_NAME).read_text()).rows) == 3
    assert not list((tmp_path / "ev").glob("*.tmp*"))  # atomic: no temp file left behind


@pytest.mark.slow
def test_score_dir_with_explain_writes_the_index(clip_factory, tiny_checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    clip_factory(src / "face.mp4", n_frames=150, seed=1)
    (src / "broken.mp4").write_text("not a video\n")
    ev = tmp_path / "ev"
    rc = cli.main(["score", str(src), "--checkpoint", str(tiny_checkpoint), "--out",
                   str(tmp_path / "r.jsonl"), "--device", "cpu", "--explain", str(ev)])
    assert rc == 1  # the broken file failed
    t = _parse((ev / INDEX_NAME).read_text())
    by_name = {Path(r[0]).name: r for r in t.rows}
    assert set(by_name) == {"face.mp4", "broken.mp4"}
    assert by_name["broken.mp4"][4] == "read_error" and "broken.mp4" in by_name["broken.mp4"][5]
    assert by_name["face.mp4"][4] == "ok" and by_name["face.mp4"][1] in ("FAKE", "REAL")
    assert len(t.links) == 1 and (ev / t.links[0]).is_file()
    sheet = (ev / t.links[0]).read_text()
    assert "WARNING: this model was trained on SYNTHETIC data" in sheet
    # a resumed run (nothing left to score) rewrites the page whole
    (ev / INDEX_NAME).unlink()
    cli.main(["score", str(src), "--checkpoint", str(tiny_checkpoint), "--out",
              str(tmp_path / "r.jsonl"), "--device", "cpu", "--explain", str(ev)])
    assert _parse((ev / INDEX_NAME).read_text()).rows == t.rows

"""flows/report_artifact.py: the decision report as a self-contained markdown artifact for the Prefect UI."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from flows.report_artifact import (
    MAX_TOTAL_BYTES,
    image_references,
    self_contained_markdown,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_REPORT = REPO_ROOT / "reports" / "decision_report.md"
DATA_URI_RE = re.compile(r"^data:(?P<mime>image/[a-z+.-]+);base64,(?P<payload>[A-Za-z0-9+/=]+)$")
NOTE_RE = re.compile(r"\*\[figure not shown here: (?:[^`\]]*: )?`(?P<target>[^`]+)` \((?P<why>[^)]*)\); [^\]]*\]\*")
PLACEHOLDER = "\x00IMG\x00"


def _png(path: Path, size: float = 1.0) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2 * size, 1.5 * size), dpi=50)
    ax.plot([0, 1, 2], [0, 1, 0])
    fig.savefig(path, format="png")
    plt.close(fig)
    return path.read_bytes()


def _check_resolves(markdown: str, base: Path) -> tuple[int, int, list[str]]:
    """Every image in `markdown` is a data: URI of a file under `base` or remote; returns counts and notes."""
    embedded = remote = 0
    for match in image_references(markdown):
        target = match.group("target").strip("<>")
        uri = DATA_URI_RE.match(target)
        if uri:
            base64.b64decode(uri.group("payload"), validate=True)
            embedded += 1
        else:
            assert target.startswith(("http://", "https://")), f"unresolved image reference {target!r}"
            remote += 1
    notes = [m.group("target") for m in NOTE_RE.finditer(markdown)]
    return embedded, remote, notes


@pytest.fixture()
def report(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = {
        "figures/curve.png": _png(tmp_path / "figures" / "curve.png"),
        "figures/big.png": _png(tmp_path / "figures" / "big.png", size=6.0),
    }
    text = (
        "# Report\n\n"
        "Some text with a [link](figures/curve.png) that is not an image.\n\n"
        "![curve](figures/curve.png)\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "![missing one](figures/missing.png)\n\n"
        "![remote](https://example.org/x.png)\n\n"
        "![too big](figures/big.png \"a title\")\n\n"
        "```\n![in code](figures/curve.png)\n```\n\n"
        "![curve again](./figures/curve.png)\n"
    )
    path = tmp_path / "report.md"
    path.write_text(text)
    return path, files


def test_local_images_become_data_uris_of_the_same_bytes(report):
    path, files = report
    limit = len(files["figures/curve.png"]) + 1
    assert len(files["figures/big.png"]) > limit
    original = path.read_text()
    out = self_contained_markdown(path, max_image_bytes=limit)

    assert path.read_text() == original  # the file itself is not touched
    refs = {m.group("alt"): m.group("target") for m in image_references(out)}
    for alt in ("curve", "curve again"):
        uri = DATA_URI_RE.match(refs[alt])
        assert uri and uri.group("mime") == "image/png"
        assert base64.b64decode(uri.group("payload")) == files["figures/curve.png"]
    assert refs["remote"] == "https://example.org/x.png"
    assert "![in code](figures/curve.png)" in out  # fenced code is left alone
    embedded, remote, notes = _check_resolves(out, path.parent)
    assert (embedded, remote) == (2, 1)
    assert sorted(notes) == ["figures/big.png", "figures/missing.png"]
    assert "file missing" in out
    assert "over the" in out and "limit per image" in out


def test_nothing_else_changes(report):
    path, files = report
    out = self_contained_markdown(path, max_image_bytes=len(files["figures/curve.png"]) + 1)
    # Every image (outside code) is replaced one for one, in order; the rest is byte-identical.
    assert _skeleton(out) == _skeleton(path.read_text())
    assert len(_replacements(out)) == len(image_references(path.read_text())) == 5


def _skeleton(markdown: str) -> str:
    """`markdown` with every image reference (outside code) and every note replaced by a placeholder."""
    out = markdown
    for start, end, _ in reversed(_replacements(markdown)):
        out = out[:start] + PLACEHOLDER + out[end:]
    return out


def _replacements(markdown: str) -> list[tuple[int, int, str]]:
    """(start, end, target or note file) of every image reference and note, in document order."""
    items = [(m.start(), m.end(), m.group("target")) for m in image_references(markdown)]
    items += [(m.start(), m.end(), m.group("target")) for m in NOTE_RE.finditer(markdown)]
    return sorted(items)


def test_total_budget_turns_later_images_into_notes(report):
    path, files = report
    text_only = len(path.read_text().encode())
    # Room for the text and one embedded copy of curve.png, not two.
    one = len(base64.b64encode(files["figures/curve.png"])) + 100
    out = self_contained_markdown(path, max_image_bytes=10**7, max_total_bytes=text_only + one + 400)
    embedded, _, notes = _check_resolves(out, path.parent)
    assert embedded == 1
    assert "figures/big.png" in notes and "./figures/curve.png" in notes
    assert "size budget is spent" in out


def test_gif_over_budget_and_svg(tmp_path: Path):
    (tmp_path / "animations").mkdir()
    gif = b"GIF89a" + b"\x00" * 2000
    (tmp_path / "animations" / "a.gif").write_bytes(gif)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'
    (tmp_path / "s.svg").write_bytes(svg)
    (tmp_path / "r.md").write_text("![anim](animations/a.gif)\n![vec](s.svg)\n")
    out = self_contained_markdown(tmp_path / "r.md", max_image_bytes=1000)
    assert NOTE_RE.search(out).group("target") == "animations/a.gif"
    assert f"![vec](data:image/svg+xml;base64,{base64.b64encode(svg).decode()})" in out
    out = self_contained_markdown(tmp_path / "r.md", max_image_bytes=10_000)
    assert f"data:image/gif;base64,{base64.b64encode(gif).decode()}" in out


def test_committed_report_artifact_is_self_contained():
    if not REPO_REPORT.exists():
        pytest.skip("reports/decision_report.md is not in this checkout")
    original = REPO_REPORT.read_text()
    out = self_contained_markdown(REPO_REPORT)
    assert len(out.encode("utf-8")) <= MAX_TOTAL_BYTES
    embedded, remote, notes = _check_resolves(out, REPO_REPORT.parent)
    local_refs = [m for m in image_references(original) if not m.group("target").startswith(("http", "data:"))]
    assert embedded + len(notes) == len(local_refs) > 0
    # One for one with the report's images, in order: each embedded one has the bytes of the linked file.
    original_refs = image_references(original)
    out_items = _replacements(out)
    assert len(out_items) == len(original_refs)
    for ref, (_, _, item) in zip(original_refs, out_items):
        target = ref.group("target")
        uri = DATA_URI_RE.match(item)
        if uri:
            assert base64.b64decode(uri.group("payload")) == (REPO_REPORT.parent / target).read_bytes()
        else:
            assert item == target  # remote, left alone, or a note naming this file
    assert _skeleton(out) == _skeleton(original)

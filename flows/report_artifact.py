"""The decision report as a self-contained Prefect markdown artifact.

`reports/decision_report.md` links its figures by relative path (``![name](figures/name.png)``) so
that it reads well on a git host. The Prefect UI renders an artifact's markdown on its own page, with
no folder to resolve those paths against: every figure would be a broken image. This module returns a
copy of the markdown in which every local image is an inline ``data:image/...;base64,...`` URI; the
file on disk is left as it is.

Why data URIs: the Prefect 3 UI (the React "V2" UI, default since 3.x, `prefect/server/ui_v2_build`,
`lazy-markdown-*.js`) renders markdown artifacts with react-markdown and wraps the default URL
transform so that ``<img src="data:image/...">`` is kept (``/^data:image\\//``), and its
rehype-sanitize schema adds ``data`` to the allowed ``src`` protocols. The older Vue UI renders with
`marked` without sanitizing. Prefect's own image artifact (`create_image_artifact`) only takes a URL,
which a local run does not have.

Size: the server stores the artifact's ``data`` in a JSON column with no size check
(`prefect.server.schemas.actions.ArtifactCreate`), but every pipeline run stores one more version,
and the UI loads the whole markdown to show it. So the artifact is kept under `MAX_TOTAL_BYTES`
(5 MiB: the committed report's ~2.8 MB of PNGs are ~3.8 MB in base64, plus ~85 kB of text) and
no single image above `MAX_IMAGE_BYTES` (512 KiB on disk; the largest committed figure is ~300 kB)
is embedded. An image that is not embedded (missing, too large, over the total budget, not an image)
becomes a visible note naming the file instead of a broken image. Remote images (``http://``,
``https://``, ``data:``, any URL with a scheme) are left alone.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import unquote

MAX_IMAGE_BYTES = 512 * 1024  # per image, size of the file on disk
MAX_TOTAL_BYTES = 5 * 1024 * 1024  # the whole artifact markdown, UTF-8

MIME_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}

# ![alt](target) or ![alt](target "title") / ![alt](<target with spaces> 'title')
IMAGE_RE = re.compile(
    r"!\[(?P<alt>[^\]\n]*)\]\(\s*(?P<target><[^>\n]*>|[^\s)]+)(?P<title>\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^)\n]*\)))?\s*\)"
)
SCHEME_RE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _is_remote(target: str) -> bool:
    """A URL with a scheme (http:, https:, data:, ...) or protocol-relative (//host): not a local file."""
    return bool(SCHEME_RE.match(target))


def _outside_fences(markdown: str) -> list[tuple[int, int]]:
    """(start, end) character spans of `markdown` that are not inside fenced code blocks."""
    spans: list[tuple[int, int]] = []
    pos = 0
    start = 0
    fence: str | None = None
    for line in markdown.splitlines(keepends=True):
        match = FENCE_RE.match(line)
        if fence is None and match:
            spans.append((start, pos))
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
            start = pos + len(line)
        pos += len(line)
    if fence is None:
        spans.append((start, pos))
    return spans


def image_references(markdown: str) -> list[re.Match[str]]:
    """Every markdown image reference outside fenced code blocks, in document order."""
    found: list[re.Match[str]] = []
    for start, end in _outside_fences(markdown):
        found.extend(IMAGE_RE.finditer(markdown, start, end))
    return found


def _note(alt: str, target: str, why: str) -> str:
    label = f"{alt}: " if alt else ""
    return f"*[figure not shown here: {label}`{target}` ({why}); see the file next to the report]*"


def _resolve(base: Path, target: str) -> Path:
    path = Path(target)
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        decoded = Path(unquote(target))
        decoded = decoded if decoded.is_absolute() else base / decoded
        if decoded.exists():
            return decoded
    return path


def self_contained_markdown(
    report_path: Path,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> str:
    """The markdown of `report_path` with every local image inlined as a ``data:`` URI.

    Paths resolve against the report's folder. A local image that is missing, larger than
    `max_image_bytes`, of an unknown type, or would push the result over `max_total_bytes`
    (images are embedded in document order) becomes a visible note naming the file. Remote images
    and everything else in the markdown are left exactly as they are.
    """
    report_path = Path(report_path)
    markdown = report_path.read_text(encoding="utf-8")
    base = report_path.parent
    refs = image_references(markdown)

    # Budget for the embedded images: the total, less the text that stays as it is.
    kept_text = len(markdown.encode("utf-8")) - sum(len(m.group(0).encode("utf-8")) for m in refs)
    budget = max_total_bytes - kept_text

    pieces: list[str] = []
    last = 0
    for match in refs:
        alt, raw_target, title = match.group("alt"), match.group("target"), match.group("title") or ""
        target = raw_target[1:-1] if raw_target.startswith("<") else raw_target
        replacement = match.group(0)
        if not _is_remote(target):
            path = _resolve(base, target)
            mime = MIME_TYPES.get(path.suffix.lower())
            if mime is None:
                replacement = _note(alt, target, "not an image type the UI can show inline")
            elif not path.is_file():
                replacement = _note(alt, target, "file missing")
            elif path.stat().st_size > max_image_bytes:
                replacement = _note(
                    alt, target, f"{path.stat().st_size / 1024:.0f} KiB, over the {max_image_bytes / 1024:.0f} KiB limit per image"
                )
            else:
                encoded = base64.b64encode(path.read_bytes()).decode("ascii")
                embedded = f"![{alt}](data:{mime};base64,{encoded}{title})"
                if len(embedded) > budget:
                    replacement = _note(alt, target, f"the artifact's {max_total_bytes / 2**20:.0f} MiB size budget is spent")
                else:
                    replacement = embedded
        budget -= len(replacement.encode("utf-8"))
        pieces.append(markdown[last : match.start()])
        pieces.append(replacement)
        last = match.end()
    pieces.append(markdown[last:])
    return "".join(pieces)

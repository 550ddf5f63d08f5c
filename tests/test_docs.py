"""The README and docs/ hold together: every relative link and image resolves (anchors included),
every docs page is listed in docs/index.md, and every figure in docs/ is shown somewhere."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else re.sub(r"`+[^`]*`+", "``", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(_prose(path.read_text(encoding="utf-8")), 1):
        out += [(number, m.group(1)) for m in _LINK.finditer(line)]
    return out


def broken_links(pages: list[Path]) -> list[str]:
    """'page:line: target (why)' for every relative link that does not resolve."""
    problems = []
    for page in pages:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):      # http:, https:, mailto:, ...
                continue
            file_part, _, fragment = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                problems.append(f"{where} (no heading with that anchor)")
    return problems


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_link_and_image_resolves():
    assert broken_links(_pages()) == []


def test_index_lists_every_docs_page():
    linked = {(ROOT / "docs" / t.partition("#")[0]).resolve() for _, t in links(ROOT / "docs" / "index.md")}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if p.name != "index.md" and p.resolve() not in linked]
    assert missing == [], f"docs/index.md does not link {missing}"


def test_every_figure_in_docs_is_shown():
    shown = set()
    for page in _pages():
        shown |= {(page.parent / t.partition("#")[0]).resolve() for _, t in links(page)}
    unused = [p.name for p in sorted((ROOT / "docs").iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in shown]
    assert unused == [], f"figures in docs/ that no page shows: {unused}"


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title `x`\n\n## Speed (fp32, batch 256)\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#speed-fp32-batch-256) [ok](#readme) ![img](docs/missing.png)\n"
        "[bad](docs/b.md) [bad anchor](docs/a.md#speed) `[code](not/a/link.md)` [web](https://x.org/y)\n"
        "```\n[fenced](nowhere.md)\n```\n# README\n", encoding="utf-8")
    problems = broken_links([page])
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/missing.png (no such file)", "docs/b.md (no such file)",
        "docs/a.md#speed (no heading with that anchor)"]
    assert slug("The reference interface (`main.py`)") == "the-reference-interface-mainpy"

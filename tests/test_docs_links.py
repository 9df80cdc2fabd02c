"""Every relative link and image in README.md and docs/ points at a file that exists (and a heading, for
#anchors).

The README's sections moved to docs/ and docs/recipes/: a link copied without adjusting its path
(docs/figures/... from docs/, figures/... from docs/recipes/) shows as a broken image on GitHub.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*```.*?^\s*```", re.S | re.M)
SEGLAB_PARTS = sorted(
    p.stem if p.is_file() else p.name
    for p in (ROOT / "seglab").iterdir()
    if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()
)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    """The link targets of a page, outside code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_pages_are_found_and_have_links():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/architecture.md", "docs/speed.md", "docs/serve.md"} <= names
    assert sum(len(links(p)) for p in PAGES) > 40


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not path.startswith("/") and resolved.is_relative_to(ROOT) and resolved.exists():
                if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    broken.append(f"{where} (no heading #{anchor} in {resolved.name})")
            else:
                broken.append(f"{where} (no such file inside the repository)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_slug_follows_github():
    assert (
        slug("4. Down- and upsampling, and checkerboard artefacts")
        == "4-down--and-upsampling-and-checkerboard-artefacts"
    )
    assert slug("9. Let's try it") == "9-lets-try-it"
    assert slug("One training step against smp, and the trainer's host syncs") == (
        "one-training-step-against-smp-and-the-trainers-host-syncs"
    )


def test_readme_is_short_and_points_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md grew past 250 lines: move the detail to docs/"
    for page in PAGES:
        assert "../shared/DESIGN.md" not in page.read_text(), f"{page.name} points outside the repository"


def test_architecture_page_names_every_part_of_seglab():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p for p in SEGLAB_PARTS if not re.search(rf"\b{re.escape(p)}(/|\.py|`)", text)]
    assert not missing, f"docs/architecture.md does not place {missing} in the layout or the layers"

"""The README is the front door: short, its two commands real, and every docs page one link away.

mkdocs builds docs/ with --strict (scripts/test.sh), which checks the links between pages; the
README lies outside the site, so its links are checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
LINKS = re.findall(r"\]\(([^)\s]+)\)", README)
MAX_LINES = 250


def test_the_readme_stays_a_front_door() -> None:
    assert len(README.splitlines()) < MAX_LINES


@pytest.mark.parametrize("script", ["scripts/demo.sh", "scripts/test.sh"])
def test_the_readme_gives_the_two_commands_and_both_exist(script: str) -> None:
    assert f"bash {script}\n" in README
    assert (ROOT / script).is_file()


@pytest.mark.parametrize("page", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))
def test_every_docs_page_is_linked_from_the_readme(page: str) -> None:
    assert page in {link.split("#")[0] for link in LINKS}


def _headings(path: Path) -> set[str]:
    """The anchors of a page's headings, as MkDocs makes them (code blocks' `#` lines are not headings)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slugify(m, "-") for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("link", sorted({link for link in LINKS if "://" not in link}))
def test_every_relative_link_in_the_readme_reaches_a_file_and_heading(link: str) -> None:
    target, _, anchor = link.partition("#")
    path = ROOT / target if target else ROOT / "README.md"
    assert path.is_file(), f"{link}: no file {target}"
    if anchor:
        assert anchor in _headings(path), f"{link}: {target} has no heading #{anchor}"

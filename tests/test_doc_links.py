"""Every relative link of README.md and docs/*.md leads somewhere: the file exists, and a ``#anchor`` is a heading
of the page it names, spelt as GitHub spells heading anchors. README is the landing page and the detail lives in
docs/, so a page renamed or a heading reworded must not leave a link that opens nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The page without its fenced blocks and inline code, where `[a](b)` is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCED.sub("", text))


def links(text: str) -> list[str]:
    """The targets of a page's markdown links and images."""
    return LINK.findall(_prose(text))


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens, a repeated
    one numbered (``-1``, ``-2``)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCED.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` whose file or heading is missing, each as 'page: target (why)'."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:: not a file of this repository
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}: {target}"
        if not file.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{where} (no heading with that anchor in {file.name})")
    return problems


def test_every_relative_link_resolves():
    assert sum(len(links(page.read_text(encoding="utf-8"))) for page in PAGES) > 50  # the extraction finds them
    problems = [problem for page in PAGES for problem in broken(page)]
    assert not problems, "\n".join(problems)


def test_the_readme_links_to_every_docs_page():
    """README is the way in: every page of docs/ is reachable from it in one click."""
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links((ROOT / "README.md").read_text("utf-8"))}
    assert sorted(p.name for p in PAGES[1:] if p.resolve() not in linked) == []


@pytest.mark.parametrize(("target", "why"), [("guide/nowhere.md", "no such file"),
                                             ("docs/demo.md#no-such-heading", "no heading"),
                                             ("#quick-start-", "no heading")])
def test_a_broken_link_is_found(tmp_path, target, why):
    """The check is not vacuous: a missing file, or a heading that is not there, is reported."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "demo.md").write_text("# The demo\n\n## Choices: `short` prompts\n")
    page = tmp_path / "README.md"
    page.write_text(f"## Quick start\n\nSee [there]({target}), [ok](docs/demo.md#choices-short-prompts) and "
                    "`[code](not/a/link.md)`.\n\n```\n[nor](this.md)\n```\n")
    [problem] = broken(page, tmp_path)
    assert target in problem
    assert why in problem


def test_anchors_follow_github():
    text = "# Data: your own, the benchmarks\n## `fit --ckpt_path` resumes\n## Notes\n## Notes\n```\n# not one\n```\n"
    assert anchors(text) == {"data-your-own-the-benchmarks", "fit---ckpt_path-resumes", "notes", "notes-1"}

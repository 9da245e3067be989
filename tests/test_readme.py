"""The README finds its way: its contents list every section in order, and every `#anchor` link in
it leads to a heading (GitHub's anchor rules), so a renamed section cannot leave a dead link."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def headings(level: str) -> list[str]:
    """The headings outside code blocks; level "##" for sections, "#+" for every level."""
    prose = re.sub(r"^```.*?^```", "", README, flags=re.DOTALL | re.MULTILINE)
    return re.findall(rf"^{level} (.+)$", prose, flags=re.MULTILINE)


def anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_contents_list_every_section_in_order():
    contents = README.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\[(.+?)\]\(#([\w-]+)\)", contents)
    sections = [h for h in headings("##") if h != "Contents"]
    assert [name for name, _ in listed] == sections
    assert all(link == anchor(name) for name, link in listed)


def test_every_anchor_link_leads_to_a_heading():
    targets = {anchor(h) for h in headings("#+")}
    links = set(re.findall(r"\]\(#([\w-]+)\)", README))
    assert links and not links - targets, sorted(links - targets)

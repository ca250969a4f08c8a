"""The README's first commands work on a fresh clone: every path it names is in the repository
(nothing under ../shared), and its first code block's make targets exist."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_names_nothing_outside_the_repository():
    text = (REPO / "README.md").read_text()
    assert "../" not in text


def test_readme_first_commands_are_make_targets_that_exist():
    text = (REPO / "README.md").read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    targets = re.findall(r"^make (\w+)", first_block, re.M)
    assert targets[:2] == ["train", "apply"]
    makefile = (REPO / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.M), target

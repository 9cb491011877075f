"""The README's Layout section names every module of src/tunelab (and nothing that is not there)."""

import re

from conftest import ROOT


def test_readme_layout_matches_the_package() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    listed, folder = set(), None
    for line in layout.splitlines():
        name = re.match(r"\s*(\S+)", line)
        if not name:
            continue
        indent = len(line) - len(line.lstrip())
        if name.group(1) == "src/tunelab/":
            folder = ""
        elif folder is not None and indent == 2 and name.group(1).endswith("/"):
            folder = name.group(1)
        elif folder is not None and indent == 0:
            folder = None
        elif folder is not None and name.group(1).endswith(".py"):
            listed.add(folder + name.group(1))
    package = ROOT / "src" / "tunelab"
    present = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    assert listed == present, {"missing from README": sorted(present - listed), "not in src": sorted(listed - present)}

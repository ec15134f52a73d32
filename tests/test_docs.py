"""The README's pointers into the code stay true as the code moves."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_line_references_point_at_what_they_name():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    refs = re.findall(r"`(\w+\.py):(\d+)`", readme)
    assert refs, "the README names the training loop by file and line"
    for name, line in refs:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.readlines()[int(line) - 1]
        assert text.strip() == "while True:", f"README's {name}:{line} is {text.strip()!r}, not the loop"


def test_readme_names_only_files_that_exist():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for path in set(re.findall(r"`((?:common|bench/results|docs|configs)/[\w./-]+\.(?:py|md|yaml))`", readme)):
        assert os.path.exists(os.path.join(ROOT, path)), path

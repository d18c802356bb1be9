"""The documentation's code: included examples are files the tests run; every inline Python
block at least parses, so a renamed argument's syntax rot shows up here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for n, match in enumerate(BLOCK.finditer(page.read_text())):
            found.append((f"{page.name}#{n + 1}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=lambda v: v[:40])
def test_every_python_block_in_the_docs_parses(where, code):
    if code.startswith("--8<--"):
        included = ROOT / code.split('"')[1]
        assert included.exists(), f"{where} includes a missing file"
        code = included.read_text()
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def test_the_included_examples_are_files_the_tests_run():
    tested = "".join(
        (ROOT / "tests" / name).read_text()
        for name in ("test_cli.py", "test_web_apps.py", "test_publishing.py")
    )
    for page in PAGES:
        for path in re.findall(r'--8<-- "([^"]+)"', page.read_text()):
            if path.startswith("examples/"):
                module = Path(path).stem
                assert path in tested or module in tested, f"{page.name}: {path} is not run"


def test_no_page_installs_the_unrelated_distribution():
    wrong = re.compile(r"pip install ['\"]?outbox(?![-\w])")
    for page in [*PAGES, ROOT / "CONTRIBUTING.md"]:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not wrong.search(line), f"{page.name}:{number}: {line}"

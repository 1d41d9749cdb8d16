"""docs/SECURITY.md names, for each threat, the tests that prove its control: every test it
names must exist, so the page cannot point at a test that was renamed or removed."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
REFERENCE = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w+))?`")


def _file(name: str) -> Path:
    for direct in (TESTS / name, ROOT / name):
        if direct.exists():
            return direct
    found = list(TESTS.rglob(Path(name).name))
    assert len(found) == 1, f"docs/SECURITY.md names {name}: found {found}"
    return found[0]


def test_every_test_the_security_page_names_exists():
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    checked, missing = 0, []
    for line in text.splitlines():
        current = None  # a `::test_name` goes with the last file named on its line
        for path, test in REFERENCE.findall(line):
            if path:
                current = _file(path)
            if not test:
                continue
            assert current is not None, f"`::{test}` names no file: {line[:80]}"
            checked += 1
            if not re.search(rf"^(async )?def {test}\(", current.read_text(), re.M):
                missing.append(f"{current.relative_to(ROOT)}::{test}")
    assert checked >= 30, f"only {checked} test references found: has the page's format changed?"
    assert not missing, f"docs/SECURITY.md names tests that do not exist: {missing}"

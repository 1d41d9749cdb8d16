"""docs/CALLS.md lists exactly the transitions the code allows."""

import re
from pathlib import Path

from callpull.statemachine import TRANSITIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "CALLS.md"


def test_the_state_table_matches_the_state_machine():
    rows = {}
    for name, routes in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", DOC.read_text(), flags=re.M):
        rows[name] = {tuple(part.strip().split(" → ")) for part in routes.split(",")}
    expected = {name: {(str(a), str(b)) for a, b in routes.items()} for name, routes in TRANSITIONS.items()}
    assert rows == expected

"""docs/reliability.md names a test behind every guarantee: each named file and test must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_by_the_reliability_page_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    current = None
    named = 0
    for token in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)?)`", text):
        if not token:
            continue
        path, _, name = token.partition("::")
        if path:
            current = ROOT / path
            assert current.is_file(), f"docs/reliability.md names {path}, which does not exist"
        if name:
            assert current is not None, f"::{name} follows no test file"
            assert re.search(rf"^def {name}\(", current.read_text(), re.M), f"{current.name} has no {name}"
            named += 1
    assert named >= 40

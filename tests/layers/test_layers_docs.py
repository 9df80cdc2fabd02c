"""docs/layers.md: every snippet runs and prints what the page says it prints."""

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "layers.md"


def test_layers_page_examples():
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 30
    assert result.failed == 0, f"{result.failed} example(s) in {DOC} print something else (see above)"

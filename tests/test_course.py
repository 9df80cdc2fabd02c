"""docs/course.md: every snippet runs, every figure is there, and every number it quotes is the measured one.

The figures and docs/figures/course/numbers.json come from scripts/course_figures.py. Its quick variant runs
here (slow marker, still part of `make test`) and must reproduce the exact numbers of the committed full run.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "course.md"
FIGURES = ROOT / "docs" / "figures"
NUMBERS = FIGURES / "course" / "numbers.json"
SCRIPT = ROOT / "scripts" / "course_figures.py"
# What the script draws: each must be committed and shown on the page (tasks.png needs the DSB data).
DRAWN = ("tasks", "cost", "atrous", "metrics", "losses", "uncertainty", "reliability", "tryit", "pareto")
README_NUMBER = re.compile(r"<!-- readme -->(.*?)<!-- /readme -->")


def course_script() -> Any:
    spec = importlib.util.spec_from_file_location("course_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def numbers() -> dict[str, Any]:
    return json.loads(NUMBERS.read_text())


def test_course_page_examples():
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 50
    assert result.failed == 0, f"{result.failed} example(s) in {DOC} print something else (see above)"


def test_every_figure_is_there_and_shown():
    text = DOC.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, "the page shows no figure"
    for link in links:
        assert not link.startswith(("/", "http")), f"{link}: use a path relative to docs/ so GitHub shows it"
        assert (DOC.parent / link).is_file(), f"{DOC.name} shows {link}, which does not exist"
    for name in DRAWN:
        assert f"figures/course/{name}.png" in links, f"scripts/course_figures.py draws {name}.png; show it"
        assert (FIGURES / "course" / f"{name}.png").is_file()


def test_quoted_numbers_are_the_measured_ones(numbers):
    script = course_script()
    quoted = script.NUMBER.findall(DOC.read_text())
    assert len(quoted) > 30
    for key, text in quoted:
        value = script.lookup(numbers, key)
        assert isinstance(value, int | float) and math.isfinite(value), f"{key}: {value!r} is not a number"
        assert script.format_like(text, value) == text.strip(), (
            f"docs/course.md quotes {key} as {text!r} but numbers.json has {value!r}; rerun "
            "`.venv/bin/python scripts/course_figures.py --update-doc` and reread the sentence"
        )


def test_tables_are_the_measured_ones(numbers):
    script = course_script()
    tables = dict(script.TABLE.findall(DOC.read_text()))
    rendered = script.render_tables(numbers)
    assert set(tables) == set(rendered)
    for name, table in tables.items():
        assert table == rendered[name], f"table {name} differs from numbers.json; rerun with --update-doc"


def test_numbers_quoted_from_the_readme_are_in_it():
    """The README's results moved to docs/ (recipes, speed, serve): a quoted number must still be in
    README.md or in a page under docs/ other than the course itself, as a whole number (0.499 is not 0.4991)."""
    pages = [ROOT / "README.md", *(p for p in sorted((ROOT / "docs").rglob("*.md")) if p != DOC)]
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in pages}
    quoted = README_NUMBER.findall(DOC.read_text())
    assert len(quoted) >= 5
    for text in quoted:
        number = re.compile(rf"(?<![\d.]){re.escape(text)}(?![\d])")
        homes = [name for name, page in texts.items() if number.search(page)]
        assert homes, f"docs/course.md quotes {text} from the README, but neither README.md nor docs/ has it"


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-8)
    return a == b


@pytest.mark.slow
def test_quick_run_reproduces_the_exact_numbers(tmp_path, numbers):
    """The short variant of the script (CI): every figure drawn, every exact quantity as in numbers.json."""
    command = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    quick = json.loads((tmp_path / "numbers.json").read_text())
    assert quick["run"]["mode"] == "quick"
    have_data = "tasks.nuclei" in quick["exact"]
    for name in DRAWN:
        if name != "tasks" or have_data:
            assert (tmp_path / f"{name}.png").is_file(), f"the quick run drew no {name}.png"
    expected = {k: v for k, v in numbers["exact"].items() if have_data or not k.startswith("tasks.")}
    assert set(quick["exact"]) == set(expected)
    drifted = [k for k in expected if not same(quick["exact"][k], expected[k])]
    assert not drifted, "exact quantities changed: " + ", ".join(
        f"{k}: {expected[k]} -> {quick['exact'][k]}" for k in drifted
    )
    assert set(quick["measured"]) == set(numbers["measured"])

"""Print (or write into docs/models.md) the Markdown table of every architecture x a few encoders -> parameters.

Models are built on the meta device (no memory, no weights, no download), so the table takes seconds. Run:

    .venv/bin/python scripts/model_table.py            # print the table
    .venv/bin/python scripts/model_table.py --update   # replace the table in docs/models.md between its markers
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from seglab.errors import ConfigError
from seglab.models.archs import NATIVE_DEFAULT
from seglab.models.factory import create_model, list_models

ENCODERS = ("resnet18", "resnet50", "mobilenetv3_large_100", "efficientnet_b0")
NUM_CLASSES = 21
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def count_params(arch: str, **kwargs: object) -> int | None:
    """Parameters of ``create_model(arch, num_classes=21, **kwargs)``; None if the combination is invalid."""
    try:
        with torch.device("meta"):
            model = create_model(arch, num_classes=NUM_CLASSES, **kwargs)
    except ConfigError:
        return None
    return sum(p.numel() for p in model.parameters())


def _cell(n: int | None, note: str = "") -> str:
    return "—" if n is None else f"{n / 1e6:.2f}{note}"


def model_table() -> str:
    """The Markdown table: one row per architecture, parameters in millions (21 classes, RGB input)."""
    header = ["arch", "native encoder", *ENCODERS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for arch in list_models():
        if arch == "plain_fcn":
            native = _cell(count_params(arch), " (conv stack)")
            row = [native] + ["—"] * len(ENCODERS)
        else:
            name = NATIVE_DEFAULT.get(arch)
            native = "—" if name is None else _cell(count_params(arch, encoder=name), f" ({name})")
            row = [native] + [_cell(count_params(arch, encoder=e)) for e in ENCODERS]
        lines.append("| " + " | ".join([f"`{arch}`", *row]) + " |")
    return "\n".join(lines)


def update_page(path: Path = PAGE) -> None:
    """Replace the text between the table markers of ``path`` with a fresh table."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{model_table()}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="write the table into docs/models.md")
    args = parser.parse_args()
    if args.update:
        update_page()
    else:
        print(model_table())


if __name__ == "__main__":
    main()

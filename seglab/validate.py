"""The checks of every numeric command-line value, in one place: argparse ``type=`` functions.

Each turns the text of one flag into a number within its range, or raises ``argparse.ArgumentTypeError``
naming the range, so a bad value ends in argparse's one-line error (exit 2) before any work, never in a
traceback from deep inside torch. Upper bounds are there only where a huge value would exhaust memory (sizes,
bins, scales) or cannot work (ports, threads). Config values (YAML, ``--set``) are checked by
``Config.validate`` with the same ranges where the two meet (epochs, batch size, learning rate, ...).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from seglab.errors import ConfigError

# pixels: the largest image side, tile or traced size a command accepts (16384² RGB in fp32: 3 GiB)
MAX_SIDE = 16384


def integer(lo: int, hi: int | None = None, unit: str = "") -> Callable[[str], int]:
    """An ``int`` type for argparse within ``lo..hi`` (``hi`` None: no upper bound)."""
    allowed = f"an integer >= {lo}" if hi is None else f"an integer within {lo}..{hi}"
    allowed += f" ({unit})" if unit else ""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number(
    lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False, unit: str = ""
) -> Callable[[str], float]:
    """A finite ``float`` type for argparse within ``lo``..``hi`` (each end closed unless ``*_open``)."""
    left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
    allowed = (
        f"a number {'>' if lo_open else '>='} {lo:g}"
        if hi == math.inf
        else f"a number within {left}{lo:g}, {hi:g}{right}"
    )
    allowed += f" ({unit})" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        inside = math.isfinite(value) and (value > lo if lo_open else value >= lo)
        inside = inside and (value < hi if hi_open else value <= hi)
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = integer(1)
nonneg_int = integer(0)
side = integer(1, MAX_SIDE, "pixels")  # image sizes, tiles, traced sizes
overlap = integer(0, MAX_SIDE, "pixels")
port = integer(0, 65535, "0: any free port")
threads = integer(1, 1024)
processes = integer(1, 1024)
seed = integer(0, 2**32 - 1)
num_classes = integer(1, 65536)
bins = integer(1, 10_000)
samples = integer(1, 10_000)
ignore_index = integer(0, 65535, "a mask value")
positive_float = number(0, lo_open=True)
probability = number(0, 1, lo_open=True, hi_open=True)  # a threshold strictly between 0 and 1
dropout = number(0, 1, hi_open=True)  # a dropout probability in [0, 1)
scale = number(0, 8, lo_open=True)  # a resize factor (TTA scales)


def check_tiling(tile: int | None, overlap: int) -> None:
    """Tiled inference's two values together (ConfigError): a tile >= 1 (or None: no tiling), an overlap >= 0 and
    at most twice the tile, beyond which the context is work for nothing (``--tile 8 --overlap 16000`` ran on)."""
    if tile is None:
        return
    if tile < 1 or overlap < 0:
        raise ConfigError(f"tile must be >= 1 and overlap >= 0, got tile={tile}, overlap={overlap}")
    if overlap > 2 * tile:
        raise ConfigError(
            f"overlap {overlap} is more than twice the tile {tile}: every tile would compute "
            f"{(tile + 2 * overlap) ** 2 / tile**2:.0f}x its own pixels; lower --overlap or raise --tile"
        )

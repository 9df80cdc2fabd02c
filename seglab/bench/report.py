"""Benchmark results as tables (Markdown, CSV, JSON) and a speed/accuracy scatter plot with its Pareto front."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from seglab.files import atomic_write, write_json

COLUMNS = (
    "model",
    "path",
    "size",
    "batch",
    "params",
    "gmacs",
    "miou",
    "latency_ms",
    "p90_ms",
    "fps",
    "peak_mem_mb",
    "max_abs_diff",
    "faithful",
    "note",
)


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key == "params":
        return f"{v / 1e6:.2f} M" if v >= 100_000 else f"{v:,}"
    if key == "gmacs":
        return f"{v:.3g}"
    if key == "max_abs_diff":
        return f"{v:.1e}"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4f}" if key == "miou" else f"{v:.2f}"
    return str(v)


def format_protocol(protocol: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in protocol.items())


def to_markdown(result: dict[str, Any]) -> str:
    """The protocol as a line, then one table row per (model, path, size, batch)."""
    rows = result["rows"]
    cols = [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    lines = [
        f"Protocol: {format_protocol(result['protocol'])}",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(c, r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({c: r.get(c) for c in COLUMNS})
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]], maximize_y: bool = True) -> list[int]:
    """Indices of the points not dominated by another (higher x, and higher y or lower y when
    ``maximize_y`` is False), sorted by x."""
    sign = 1 if maximize_y else -1
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and sign * y2 >= sign * y) and (x2 > x or sign * y2 > sign * y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def scatter_png(result: dict[str, Any], path: Path) -> str:
    """FPS against mIoU (when every timed row has one) or against GMACs, Pareto front highlighted.
    Returns the y quantity plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("fps") is not None and r.get("faithful", True)]
    use_miou = bool(rows) and all(r.get("miou") is not None for r in rows)
    ykey = "miou" if use_miou else "gmacs"
    rows = [r for r in rows if r.get(ykey) is not None]
    pts = [(float(r["fps"]), float(r[ykey])) for r in rows]
    front = pareto_front(pts, maximize_y=use_miou) if pts else []
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    if pts:
        for way in dict.fromkeys(r["path"] for r in rows):  # one colour per execution path
            idx = [i for i, r in enumerate(rows) if r["path"] == way]
            ax.scatter([pts[i][0] for i in idx], [pts[i][1] for i in idx], s=30, label=way)
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            "o-",
            c="tab:red",
            mfc="none",
            ms=12,
            label="Pareto front",
        )
        labelled = set(front) | {
            max((i for i, r in enumerate(rows) if r["model"] == m), key=lambda i: pts[i][0])
            for m in {r["model"] for r in rows}
        }
        for i in sorted(labelled):
            r = rows[i]
            ax.annotate(
                f"{r['model']} {r['path']} {r['size']}px b{r['batch']}",
                pts[i],
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    if not use_miou:
        ax.set_yscale("log")
    ax.set_xlabel("FPS (images/s, log)")
    ax.set_ylabel("mIoU" if use_miou else "GMACs per image (log; lower is better)")
    p = result["protocol"]
    ax.set_title(
        f"{p.get('device_name', '')}, {p.get('threads')} threads, torch {p.get('torch')}", fontsize=9
    )
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no faithful timed rows with {ykey}", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return ykey


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """benchmark.md, benchmark.csv, benchmark.json and benchmark.png in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = {k: out / f"benchmark.{k}" for k in ("md", "csv", "json", "png")}
    atomic_write(paths["md"], lambda tmp: tmp.write_text(to_markdown(result) + "\n"))
    atomic_write(paths["csv"], lambda tmp: tmp.write_text(to_csv(result)))
    write_json(paths["json"], result)
    scatter_png(result, paths["png"])
    return paths


__all__ = [
    "COLUMNS",
    "format_protocol",
    "pareto_front",
    "scatter_png",
    "to_csv",
    "to_markdown",
    "write_outputs",
]

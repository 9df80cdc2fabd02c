"""The report as one self-contained HTML page: inline CSS, figures as ``data:image/png;base64`` images, no script
and no link to anything outside the file, so it opens offline and can be mailed or archived as it is."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

SECTIONS = {
    "curves": "Training curves",
    "classes": "Per-class IoU and Dice",
    "confusion": "Confusion matrix",
    "calibration": "Calibration and error detection",
    "examples": "Best, median and worst images",
    "model": "Model card",
}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 24px; } h2 { margin: 0 0 12px; font-size: 18px; }
section { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 16px 20px; margin: 16px 0; }
.sub { color: #666; } .kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0 0; }
.kpi { background: #fff; border: 1px solid #e2e4e8; border-radius: 8px; padding: 8px 14px; min-width: 110px; }
.kpi b { display: block; font-size: 20px; } .kpi span { color: #666; font-size: 12px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; color: #555; font-weight: 600; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #999; vertical-align: middle;
  margin-right: 6px; }
pre { background: #f3f4f6; padding: 10px; overflow-x: auto; font-size: 12px; }
code { font-size: 12px; word-break: break-all; } .note { color: #8a5300; }
summary { cursor: pointer; margin: 12px 0 4px; font-weight: 600; }
code.key { white-space: nowrap; word-break: normal; } table.plan td { vertical-align: top; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else _e(value)


def _count(n: int | None) -> str:
    """A count as ``seglab benchmark --cost`` prints it, exact in brackets: 9.32 G (9,321,062,400)."""
    from seglab.bench.cost import human

    return "n/a" if n is None else f"{n:,}" if n < 1000 else f"{human(n)} ({n:,})"


def _img(name: str, pngs: dict[str, bytes], alt: str) -> str:
    data = base64.b64encode(pngs[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _swatch(colour: Sequence[int]) -> str:
    r, g, b = (int(c) for c in colour)
    return f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _section(key: str, number: int, body: str) -> str:
    return f'<section id="{key}"><h2>{number}. {SECTIONS[key]}</h2>{body}</section>'


def _value(value: Any) -> str:
    """A config value as one line of YAML flow style: 0.003, [1.0, 1.0], {ce: 1.0, dice: 1.0}, null."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("\n...").removesuffix(" ...").strip()


def _plan_part(plan: dict[str, Any]) -> str:
    """The model card's Plan part: kind, time limit, and a table of config key, value and the plan's reason (one
    reason cell for the keys one rule set together); a value that flags or --set changed shows the plan's own
    beside it."""
    limit = plan.get("time_limit")
    if isinstance(limit, int | float) and not isinstance(limit, bool):
        limit = f"{limit:g} s ({limit / 60:.1f} min)"
    body = ""
    for row in plan["rows"]:
        keys, planned = row["keys"], row.get("planned") or {}
        for i, key in enumerate(keys):
            value = f"<code>{_e(_value(row['values'][key]))}</code>"
            if key in planned:
                was = _e(_value(planned[key]))
                value += f" <span class='note'>(overridden; planned <code>{was}</code>)</span>"
            reason = _e(row["reason"] or "(not planned)")
            cells = f"<td><code class='key'>{_e(key)}</code></td><td>{value}</td>"
            if i == 0:
                cells += f"<td rowspan='{len(keys)}'>{reason}</td>"
            body += f"<tr>{cells}</tr>"
    return (
        "<h3>Plan</h3><p>This run's config was made by <code>seglab plan</code>: data kind "
        f"<b>{_e(plan.get('kind') or 'n/a')}</b>, time limit <b>{_e(limit or 'n/a')}</b>. Each choice with "
        "the measurement that made it:</p><table class='plan'><tr><th>config key</th><th>value</th>"
        f"<th>reason</th></tr>{body}</table>"
    )


def render_html(r: dict[str, Any], pngs: dict[str, bytes], config_text: str | None) -> str:
    """The page of report numbers ``r`` (report.json), figure PNGs by name and the run's config.yaml text."""
    u, model, train = r["uncertainty"], r["model"], r["training"]
    names, palette = r["classes"], r["palette"]
    kpis = [
        ("mIoU", _num(r["miou"])),
        ("mean Dice", _num(r["mean_dice"])),
        ("pixel accuracy", _num(r["pixel_accuracy"])),
        ("ECE", _num(u["ece"])),
        ("AURC (entropy)", _num(u["aurc_entropy"])),
        ("images", _e(r["num_images"])),
    ]
    header = (
        f"<header><h1>seglab report</h1><div class='sub'>checkpoint <code>{_e(r['checkpoint'])}</code> on the "
        f"<b>{_e(r['split'])}</b> split of <code>{_e(r['data'])}</code>; predictor: {_e(u['description'])}</div>"
        '<div class="kpis">'
        + "".join(f"<div class='kpi'><b>{v}</b><span>{_e(k)}</span></div>" for k, v in kpis)
        + "</div></header>"
    )

    seconds = train["seconds"]
    if "curves" in pngs:
        spent = f", {seconds / 60:.1f} min of training" if seconds else ""
        curves = f"<p>From the run's <code>metrics.jsonl</code>: {train['epochs']} epochs{spent}.</p>"
        curves += _img("curves", pngs, "training curves")
    else:
        curves = (
            "<p class='note'>no training log: the checkpoint's folder holds no <code>metrics.jsonl</code> "
            "(a checkpoint outside its run folder).</p>"
        )

    class_rows = [
        [_swatch(palette[i]) + _e(n), _num(r["pixel_share"][i]), _num(r["iou"][i]), _num(r["dice"][i])]
        for i, n in enumerate(names)
    ]
    class_rows.append(["<b>mean</b>", "", f"<b>{_num(r['miou'])}</b>", f"<b>{_num(r['mean_dice'])}</b>"])
    classes = (
        _img("classes", pngs, "per-class IoU and Dice")
        + "<p>Pixel share: the class's share of the ground-truth pixels (confusion-matrix row sums / total). "
        "A class with neither truth nor prediction pixels has no IoU (n/a) and is left out of the means.</p>"
        + _table(["class", "pixel share", "IoU", "Dice"], class_rows, numeric=(1, 2, 3))
    )
    confusion = (
        "<p>Each row is a true class; each cell the share of its pixels predicted as the column's class "
        "(ignored pixels left out).</p>" + _img("confusion", pngs, "confusion matrix")
    )
    cal_rows = [
        ["ECE (equal-width bins)", _num(u["ece"])],
        ["ECE (equal-mass bins)", _num(u["ece_adaptive"])],
        ["NLL", _num(u["nll"])],
        ["Brier", _num(u["brier"])],
        ["error detection AUROC (entropy)", _num(u["auroc_entropy"])],
        ["AURC (entropy; lower is better)", _num(u["aurc_entropy"])],
        ["temperature", _num(u["temperature"], 3)],
    ]
    calibration = (
        f"<p>Predictor: {_e(u['description'])}. The reliability diagram compares each confidence bin's accuracy "
        "with its confidence; the risk-coverage curve accepts pixels most certain first (by predictive entropy) "
        "and shows the error rate of those accepted.</p>"
        '<div class="row">'
        + _img("reliability", pngs, "reliability diagram")
        + _img("risk_coverage", pngs, "risk-coverage curve")
        + "</div>"
        + _table(["", ""], cal_rows, numeric=(1,))
    )
    ex_rows = [
        [_e(e["rank"]), _e(e["stem"]), _num(e["miou"]), _num(e["pixel_accuracy"])] for e in r["examples"]
    ]
    examples = (
        f"<p>The {len(r['images'])} images of the {_e(r['split'])} split ranked by per-image mIoU (mean IoU "
        "over the classes in the image's truth or prediction). Errors: red where the prediction differs from the "
        "truth, grey where the truth is ignore_index. Uncertainty: predictive entropy on the fixed scale "
        "0 .. log C (viridis).</p>"
        + _img("examples", pngs, "best, median and worst images")
        + _table(["rank", "image", "mIoU", "pixel accuracy"], ex_rows, numeric=(2, 3))
    )

    sha = f"<code>{_e(model['sha256'])}</code>"
    if model["sha256_matches_sidecar"] is not None:
        mismatch = " <span class='note'>(the sidecar records another hash)</span>"
        sha += " (matches the sidecar)" if model["sha256_matches_sidecar"] else mismatch
    h, w = model["input_size"]
    card_rows = [
        ["architecture", _e(model["arch"])],
        ["encoder", _e(model["encoder"] or "built in (the architecture's own)")],
        ["model arguments", f"<code>{_e(model['model_params'])}</code>"],
        ["parameters", _count(model["params"])],
        ["MACs per image", f"{_count(model['macs'])} at {h}x{w} ({_e(model['input_size_from'])})"],
        ["input channels", _e(model["in_channels"])],
        ["classes", " ".join(_swatch(palette[i]) + _e(n) for i, n in enumerate(names))],
        ["data set (training)", f"<code>{_e(model['data_root'] or 'n/a')}</code>"],
        ["data set (this report)", f"<code>{_e(r['data'])}</code>, {_e(r['split'])} split"],
        ["epochs", _e(train["epochs"])],
        ["training time", f"{seconds / 60:.1f} min ({seconds:.0f} s)" if seconds else "n/a"],
        ["checkpoint", f"<code>{_e(model['weights'])}</code> (epoch {_e(model['epoch'])})"],
        ["SHA-256", sha],
    ]
    card = _table(["", ""], card_rows)
    if model.get("plan"):
        card += _plan_part(model["plan"])
    if config_text is not None:
        card += (
            f"<details><summary>resolved config (config.yaml)</summary><pre>{_e(config_text)}</pre></details>"
        )

    parts = {
        "curves": curves,
        "classes": classes,
        "confusion": confusion,
        "calibration": calibration,
        "examples": examples,
        "model": card,
    }
    body = "".join(_section(key, i + 1, parts[key]) for i, key in enumerate(SECTIONS))
    title = f"seglab report: {r['checkpoint']}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main>{header}{body}</main></body></html>\n"
    )

"""The demo: synthesise SyntheticShapes, train a small U-Net, evaluate on the test split, predict a few images,
and write the run's HTML report. It sits above the engine and the reports, which it strings together."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from seglab.config import Config, DataConfig, ModelConfig, TrainConfig

TIME_LIMIT = (
    "4m"  # the training budget: with data, test evaluation and predictions the demo ends within 5 minutes
)


def demo_config(data_dir: str | Path, run_dir: str | Path, epochs: int = 12) -> Config:
    """The recipe the demo trains: a 4-level U-Net of base width 16, AdamW, poly schedule over 12 epochs or 4
    minutes (whichever ends first), CE + Dice, the precision chosen by a timed probe (train.amp: auto)."""
    return Config(
        data=DataConfig(root=str(data_dir), hflip=True, vflip=True),
        model=ModelConfig(arch="unet", params={"depth": 4, "base_channels": 16}),
        train=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, out_dir=str(run_dir), time_limit=TIME_LIMIT),
    ).validate()


def demo(
    out_dir: str | Path = "runs/demo",
    *,
    num_images: int = 1500,
    size: int = 128,
    epochs: int = 12,
    num_predictions: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline under ``out_dir``; returns the evaluation report plus paths and timings. The test
    evaluation (image by image, with per-image scores and softmax uncertainty) is also the report's:
    ``<out_dir>/report/report.html``."""
    from seglab.data.synthetic import write_folder
    from seglab.engine.evaluate import evaluate
    from seglab.engine.predict import predict
    from seglab.engine.train import train
    from seglab.reports.report import render_report

    t0 = time.perf_counter()
    out = check_demo_dir(out_dir)
    data_dir = write_folder(out / "data", num_images=num_images, size=size, overwrite=True)
    t_data = time.perf_counter() - t0
    cfg = demo_config(data_dir, out / "run", epochs)
    cfg.train.progress = progress
    result = train(cfg, overwrite=True)
    report = evaluate(
        result.best_checkpoint,
        data_dir,
        "test",
        out=out / "eval-test.json",
        progress=progress,
        uncertainty="deterministic",
        per_image=True,
    )
    test_stems = (data_dir / "splits" / "test.txt").read_text().split()[:num_predictions]
    preds = predict(
        result.best_checkpoint,
        [data_dir / "images" / f"{s}.png" for s in test_stems],
        out / "predictions",
        progress=progress,
    )
    html = render_report(report, out / "report", uncertainty="deterministic")["html"]
    report.update(
        data_dir=str(data_dir),
        run_dir=str(result.run_dir),
        predictions=preds,
        val_miou=result.best_metrics["miou"],
        report_html=html,
        seconds_data=t_data,
        seconds_train=result.seconds,
        seconds_total=time.perf_counter() - t0,
    )
    return report


def check_demo_dir(out_dir: str | Path) -> Path:
    """Check, before any work, that the demo may write into ``out_dir``: not a data set or a run folder (nor
    inside one); its ``data`` is absent or an earlier SyntheticShapes folder, its ``run`` absent or a run on that
    data (an earlier demo's), and its evaluation, predictions and report absent or earlier outputs of theirs."""
    from seglab.data.synthetic import is_synthetic_folder
    from seglab.engine.evaluate import check_report_path
    from seglab.errors import ConfigError
    from seglab.files import guard_dir, read_yaml_file, run_root
    from seglab.reports.report import check_report_dir

    out = guard_dir(out_dir, "demo folder")
    run = run_root(out)
    if run is not None:
        raise ConfigError(f"demo --out {out} lies in the run folder {run}; choose a folder outside it")
    data, run_dir = out / "data", out / "run"
    if data.exists() and not (data.is_dir() and is_synthetic_folder(data)):
        raise ConfigError(
            f"demo --out {out}: {data} exists and is not the demo's SyntheticShapes data; choose "
            "another --out"
        )
    if run_dir.exists() and any(run_dir.iterdir()):
        doc = read_yaml_file(run_dir / "config.yaml")
        section = doc.get("data") if isinstance(doc, dict) else None
        root = section.get("root") if isinstance(section, dict) else None
        if not root or Path(root).resolve() != data.resolve():
            raise ConfigError(
                f"demo --out {out}: {run_dir} exists and is not a run of the demo's data; choose "
                "another --out"
            )
    check_report_path(out / "eval-test.json", uncertainty=True)
    guard_dir(out / "predictions", "output folder")
    check_report_dir(out / "report", option="demo --out")
    return out

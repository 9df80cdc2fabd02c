"""seglab: semantic image segmentation toolkit.

The public API is imported lazily so that ``import seglab`` (and ``seglab --help``) stays instant:
torch and timm load only when a function that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_model": "seglab.models.factory",
    "list_models": "seglab.models.factory",
    "load_checkpoint": "seglab.checkpoint",
    "save_checkpoint": "seglab.checkpoint",
    "Config": "seglab.config",
    "train": "seglab.engine.train",
    "evaluate": "seglab.engine.evaluate",
    "calibrate": "seglab.engine.evaluate",
    "predict": "seglab.engine.predict",
    "plan": "seglab.plan",
    "write_report": "seglab.reports.report",
    "render_report": "seglab.reports.report",
    "SyntheticShapes": "seglab.data.synthetic",
    "FolderDataset": "seglab.data.folder",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "plan":  # a callable package (seglab.plan(DATA, "10m") plans; seglab.plan.rules are its parts)
        return importlib.import_module("seglab.plan")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'seglab' has no attribute {name!r}")

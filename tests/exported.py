"""Shared by the runtime tests (``--backend``): a tiny trained SyntheticShapes checkpoint and its exports, an
ONNX file and an OpenVINO IR, each with its sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY = {"depth": 2, "base_channels": 4}


def trained_checkpoint(data: Path, folder: Path, epochs: int = 6) -> Path:
    """A tiny U-Net with dropout trained on the SyntheticShapes folder ``data`` for a few epochs (about a second:
    its masks hold several classes, unlike a random model's); its best .safetensors checkpoint."""
    from seglab.config import Config
    from seglab.engine.train import train

    cfg = {
        "data": {"root": str(data), "num_workers": 0},
        "model": {"arch": "unet", "params": {**TINY, "dropout": 0.2}},
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "lr": 0.01,
            "loss": "ce",
            "amp": "off",
            "progress": False,
            "tensorboard": False,
            "seed": 0,
            "out_dir": str(folder),
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / f"{folder.name}.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return train(Config.load(folder.parent / f"{folder.name}.yaml")).best_checkpoint


def to_ir(onnx_file: Path, xml: Path) -> Path:
    """``onnx_file`` (a seglab export) as an OpenVINO IR ``xml`` + ``.bin`` in fp32, with the input geometry in
    its runtime info and the sidecar ``xml.yaml`` (the ONNX file's description, hashed for the IR)."""
    import openvino as ov

    from seglab.checkpoint import read_meta, write_sidecar
    from seglab.models.runtime import OV_GEOMETRY_PATH, onnx_geometry

    model = ov.convert_model(str(onnx_file))
    geometry = onnx_geometry(onnx_file)
    if geometry is not None:
        model.set_rt_info(json.dumps(geometry), OV_GEOMETRY_PATH)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    write_sidecar(xml, read_meta(onnx_file))
    return xml


def export_both(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """``checkpoint`` exported by ``seglab export`` (ONNX, dynamic sizes) and converted to an IR: (onnx, xml)."""
    from seglab.engine.export import export_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    onnx_file = export_checkpoint(checkpoint, folder / "m.onnx").path
    return onnx_file, to_ir(onnx_file, folder / "m.xml")


_TRAINED: dict[Path, tuple[Path, Path, Path]] = {}


def trained_files(shapes_dir: Path, tmp_path_factory: Any) -> tuple[Path, Path, Path]:
    """(checkpoint, ONNX export, IR) of :func:`trained_checkpoint` on ``shapes_dir``, made once per test process
    (the engine and benchmark tests share them; none writes into their folder)."""
    if shapes_dir not in _TRAINED:
        folder = tmp_path_factory.mktemp("trained-exported")
        ckpt = trained_checkpoint(shapes_dir, folder / "run")
        _TRAINED[shapes_dir] = (ckpt, *export_both(ckpt, folder / "exported"))
    return _TRAINED[shapes_dir]

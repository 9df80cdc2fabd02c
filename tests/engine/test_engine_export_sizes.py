"""Which sizes an exported ONNX graph takes (issue 26): a SegNet with dynamic sizes is refused before anything is
written (its max unpooling keeps the example's sizes), the smallest side plain ONNX Runtime takes (reflect padding;
the sidecar's ``onnx_min_size``, tested on a real export in test_engine_export_files.py), and a dynamic export
whose graph holds the example's sizes after all is made static."""

from __future__ import annotations

import pytest
import torch
import yaml

from seglab.checkpoint import CheckpointMeta, save_checkpoint
from seglab.engine import export as export_module
from seglab.engine.export import export_checkpoint, plain_min_size
from seglab.models.factory import create_model
from seglab.models.segmentor import InputGeometry


def checkpoint(folder, arch, **params):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=2, in_channels=3, **params).eval()
    meta = CheckpointMeta(
        arch=arch,
        num_classes=2,
        in_channels=3,
        model_params=params,
        class_names=["bg", "fg"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    return save_checkpoint(folder / "ckpt" / "best", model, meta)


def test_a_segnet_with_dynamic_size_is_refused_before_anything_is_written(tmp_path, run_cli):
    ckpt = checkpoint(tmp_path, "segnet", depth=2, base_channels=4)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_cli("export", ckpt, "--out", out / "segnet.onnx")
    assert code == 2 and err.count("\n") == 1, err
    assert "cannot be exported with a dynamic input size: its max unpooling" in err and "--static" in err
    assert list(out.iterdir()) == []


def test_a_static_segnet_export_says_its_size(tmp_path, run_cli):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = checkpoint(tmp_path, "segnet", depth=2, base_channels=4)
    code, out, err = run_cli(
        "export", ckpt, "--out", tmp_path / "s.onnx", "--static", "--example-size", 24, 40
    )
    assert code == 0 and "static input (1, 3, 24, 40)" in out, err
    assert yaml.safe_load((tmp_path / "s.onnx.yaml").read_text())["onnx_input_size"] == [24, 40]


@pytest.mark.parametrize(
    "multiple, margin, expected", [(1, 0, 1), (2, 0, 2), (4, 0, 3), (8, 0, 5), (32, 0, 17)]
)
def test_plain_min_size_is_where_reflect_padding_starts_to_fit(multiple, margin, expected):
    g = InputGeometry(multiple=multiple, margin=margin)
    assert plain_min_size(g, "reflect") == expected and plain_min_size(g, "replicate") == 1
    for n in range(
        expected, expected + 3 * multiple
    ):  # every size from there on: each pad smaller than the side
        assert g.output_size(n) - n < n


def test_a_dynamic_graph_that_fails_at_another_size_is_exported_static(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = checkpoint(tmp_path, "plain_fcn", widths=[4, 4])
    monkeypatch.setattr(export_module, "_runs_at", lambda path, x: False)  # as a graph with baked-in sizes
    result = export_checkpoint(ckpt, tmp_path / "u.onnx", example_size=(20, 28))
    assert not result.dynamic and result.max_abs_diff < 1e-4
    assert yaml.safe_load((tmp_path / "u.onnx.yaml").read_text())["onnx_input_size"] == [20, 28]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "u.onnx", "u.onnx.yaml"]

"""``seglab benchmark`` and the runtimes: an OpenVINO ``.xml`` MODEL is timed as an ``.onnx`` is, ``--backend``
runs the checkpoints (their timing and their mIoU) and the exported files in a runtime, and the ``openvino``
path times a PyTorch model exported at the shape, beside ``onnxruntime``, with the runtimes' versions recorded."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")

from exported import trained_files  # noqa: E402 - tests/exported.py

TIMING = ("--size", "32", "--warmup", "1", "--iters", "2", "--no-progress")


@pytest.fixture(scope="module")
def files(shapes_dir, tmp_path_factory):
    return trained_files(shapes_dir, tmp_path_factory)


def result(folder):
    return json.loads((folder / "benchmark.json").read_text())


def test_backend_runs_checkpoints_and_exported_files_in_a_runtime(files, shapes_dir, tmp_path, run_cli):
    import openvino

    from seglab.engine.evaluate import evaluate

    ckpt, onnx_file, xml = files
    out = tmp_path / "b"
    argv = ("benchmark", xml, onnx_file, "--checkpoints", ckpt, "--data", shapes_dir, "--out", out)
    code, _, err = run_cli(*argv, "--backend", "openvino", *TIMING)
    assert code == 0, err
    r = result(out)
    assert r["protocol"]["backends"] == ["openvino"] and r["protocol"]["openvino"] == openvino.__version__
    rows = {row["model"]: row for row in r["rows"]}
    assert set(rows) == {"m.xml", "m.onnx", "run/best"}
    assert all(row["fps"] > 0 and not row.get("note") for row in rows.values()), rows
    torch_miou = evaluate(ckpt, shapes_dir, out=tmp_path / "torch.json", progress=False)["miou"]
    assert (
        rows["run/best"]["miou"] == torch_miou
    )  # evaluated in openvino: the same masks (see test_engine_backends)
    assert json.loads((out / "eval-0-test.json").read_text())["backend"] == "openvino"


def test_an_xml_model_runs_in_openvino_by_default(files, tmp_path, run_cli):
    _, _, xml = files
    code, _, err = run_cli("benchmark", xml, "--out", tmp_path / "b", *TIMING)
    assert code == 0, err
    r = result(tmp_path / "b")
    assert r["protocol"]["backends"] == ["openvino"] and "openvino" in r["protocol"]
    assert [row["model"] for row in r["rows"]] == ["m.xml"] and r["rows"][0]["fps"] > 0


def test_the_openvino_path_beside_onnxruntime_is_faithful(tmp_path, run_cli):
    import onnxruntime
    import openvino

    params = "{depth: 2, base_channels: 4}"
    code, _, err = run_cli(
        "benchmark",
        "unet",
        "--params",
        params,
        "--paths",
        "onnxruntime",
        "openvino",
        "--out",
        tmp_path,
        *TIMING,
    )
    assert code == 0, err
    r = result(tmp_path)
    assert r["protocol"]["openvino"] == openvino.__version__
    assert r["protocol"]["onnxruntime"] == onnxruntime.__version__ and r["protocol"]["backends"] == ["torch"]
    rows = {row["path"]: row for row in r["rows"]}
    assert set(rows) == {"eager", "onnxruntime", "openvino"}
    for path in ("onnxruntime", "openvino"):
        assert rows[path]["faithful"] and rows[path]["max_abs_diff"] < 1e-4 and not rows[path]["note"], rows[
            path
        ]


def test_backend_on_an_architecture_or_a_file_it_cannot_run_is_one_line(files, tmp_path, run_cli):
    ckpt, onnx_file, xml = files
    out = tmp_path / "b"
    for argv, message in (
        (
            ("unet", "--checkpoints", ckpt),
            "--backend runs checkpoints and exported files; time the architecture",
        ),
        ((xml,), "m.xml is an OpenVINO IR: it runs only with --backend openvino"),
    ):
        backend = "openvino" if argv[0] == "unet" else "onnxruntime"
        code, _, err = run_cli("benchmark", *argv, "--backend", backend, "--out", out, *TIMING)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    code, _, err = run_cli("benchmark", onnx_file, "--backend", "torch", "--out", out, *TIMING)
    assert code == 2 and "m.onnx is an exported ONNX model" in err and err.count("\n") == 1
    for argv in ((xml,), ("--checkpoints", ckpt, "--backend", "onnxruntime")):
        code, _, err = run_cli("benchmark", *argv, "--device", "cuda", "--out", out, *TIMING)
        assert code == 2 and "on the CPU only here, not on 'cuda'" in err and err.count("\n") == 1, err
    assert not out.exists()

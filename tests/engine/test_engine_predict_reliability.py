"""predict on real-world folders: unreadable files are skipped and summarised, outputs inside the input folder
are never read back, blocked output paths fail in one line; tile-by-tile outputs equal the whole-tensor ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from seglab.checkpoint import load_checkpoint
from seglab.engine.predict import PredictError, predict
from seglab.errors import CheckpointError
from seglab.inference import (
    overlay,
    predict_labels,
    predict_probs,
    predict_tiled,
    tile_starts,
    tile_window,
    tiling,
)
from seglab.models.factory import create_model


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt


def images(folder, n=4, size=(32, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_unreadable_file_is_skipped_named_and_summarised(ckpt, tmp_path, capsys, run_cli):
    src = images(tmp_path / "in")
    (src / "x.png").write_text("not an image")
    out = tmp_path / "out"
    code, stdout, err = run_cli("predict", ckpt, src, "--out", out, "--no-progress")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("seglab: skipped x.png: cannot read") and str(src / "x.png") in lines[0]
    assert (
        lines[1].startswith("seglab: error: predicted 4 of 5 images into")
        and "1 failed: x.png (cannot read" in lines[1]
    )
    assert stdout == ""
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"im{i}_{k}.png" for i in range(4) for k in ("mask", "overlay"))  # no temp files

    with pytest.raises(PredictError, match=r"^predicted 4 of 5 images .* 1 failed: x\.png") as info:
        predict(ckpt, [src], tmp_path / "api", progress=False, log=lambda line: None)
    assert [r["input"] for r in info.value.results] == [str(src / f"im{i}.png") for i in range(4)]
    assert [p.name for p, _ in info.value.failures] == ["x.png"]


def test_other_errors_stop_at_once(ckpt, tmp_path):
    src = images(tmp_path / "in", n=1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    (tmp_path / "bad.yaml").write_text(ckpt.with_suffix(".yaml").read_text())
    with pytest.raises(CheckpointError):
        predict(bad, [src], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["out is the input folder", "glob with out inside"])
def test_second_run_predicts_exactly_the_original_images(ckpt, tmp_path, layout):
    src = images(tmp_path / "in", n=3)
    originals = sorted(str(p) for p in src.iterdir())
    if layout == "out is the input folder":
        out, inputs = src, lambda: [src]
    else:  # `seglab predict ckpt in/* --out in/pred`: the shell passes the output folder back in
        out, inputs = src / "pred", lambda: sorted(src.iterdir())
    first = predict(ckpt, inputs(), out, progress=False, prob_maps=["fg"])
    second = predict(ckpt, inputs(), out, progress=False, prob_maps=["fg"])
    assert sorted(r["input"] for r in first) == sorted(r["input"] for r in second) == originals
    assert len(list(out.glob("*_mask.png"))) == 3 and not list(out.glob("*_mask_mask.png"))


def test_blocked_output_paths_fail_in_one_line(ckpt, tmp_path, run_cli, shapes_dir):
    src = images(tmp_path / "in", n=1)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [  # argv, what the one line must say
        (["predict", ckpt, src, "--out", blocker], f"output folder {blocker} is blocked by a file"),
        (["predict", ckpt, src, "--out", blocker / "sub"], f"output folder {blocker / 'sub'}"),
        (
            ["evaluate", ckpt, "--data", shapes_dir, "--out", blocker / "r.json"],
            f"report folder {blocker} is blocked",
        ),
        (
            ["evaluate", ckpt, "--data", shapes_dir, "--out", blocker / "a" / "r.json"],
            f"report folder {blocker / 'a'}",
        ),
        (["evaluate", ckpt, "--data", shapes_dir, "--out", tmp_path], f"--out {tmp_path} is a folder"),
        (
            ["data", "synth", "--out", blocker, "--num", 2, "--size", 16],
            f"data folder {blocker} is blocked by a file",
        ),
        (
            ["data", "synth", "--out", blocker / "d", "--num", 2, "--size", 16],
            f"parent folder {blocker} is blocked",
        ),
        (
            ["benchmark", "unet", "--out", blocker, "--size", 16],
            f"output folder {blocker} is blocked by a file",
        ),
        (["export", ckpt, "--out", blocker / "m.onnx"], f"output folder {blocker} is blocked by a file"),
        (["export", ckpt, "--out", tmp_path], f"export --out {tmp_path} is a folder"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(*argv)
        assert code == 2 and err.startswith("seglab: error: ") and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and blocker.read_text() == "a file"


# -- tiling: the same numbers with memory bounded by the tile ------------------------------------------------


def reference_tiled(model, image, tile, overlap):
    """The former implementation: mirror the whole image, then cut every tile out of the copy."""
    n, _, h, w = image.shape
    mode = "reflect" if overlap < min(h, w) else "replicate"
    padded = F.pad(image, (overlap,) * 4, mode=mode) if overlap else image
    out = None
    for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
            th, tw = min(tile, h), min(tile, w)
            logits = model(padded[..., y0 : y0 + th + 2 * overlap, x0 : x0 + tw + 2 * overlap])
            logits = logits[..., overlap : overlap + th, overlap : overlap + tw]
            if out is None:
                out = logits.new_empty(n, logits.shape[1], h, w)
            out[..., y0 : y0 + th, x0 : x0 + tw] = logits
    return out


@pytest.mark.parametrize(
    "h, w, tile, overlap",
    [(45, 61, 16, 5), (7, 50, 16, 6), (30, 30, 64, 8), (5, 3, 4, 2), (1, 9, 4, 2), (40, 33, 10, 0)],
)
def test_tiles_equal_the_former_whole_image_mirroring(h, w, tile, overlap):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, in_channels=2, depth=2, base_channels=4).eval()
    image = torch.randn(2, 2, h, w)
    mode = "reflect" if overlap < min(h, w) else "replicate"
    whole = F.pad(image, (overlap,) * 4, mode=mode)
    for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
            th, tw = min(tile, h), min(tile, w)
            window = tile_window(image, y0, x0, th, tw, overlap, mode)
            assert torch.equal(window, whole[..., y0 : y0 + th + 2 * overlap, x0 : x0 + tw + 2 * overlap])
    with torch.inference_mode():
        assert torch.equal(
            predict_tiled(model, image, tile, overlap), reference_tiled(model, image, tile, overlap)
        )


def test_tiling_never_pads_or_runs_more_than_a_tile(monkeypatch):
    seen = []
    real_pad = F.pad

    def spy(x, *args, **kwargs):
        seen.append(x.shape[-2] * x.shape[-1])
        return real_pad(x, *args, **kwargs)

    monkeypatch.setattr(tiling.F, "pad", spy)
    sizes = []
    conv = nn.Conv2d(3, 2, 3, padding=1).eval()
    model = lambda x: sizes.append(x.shape[-2] * x.shape[-1]) or conv(x)  # noqa: E731
    image = torch.randn(1, 3, 200, 150)
    predict_tiled(model, image, tile=32, overlap=8)
    assert (
        seen and max(seen) <= 48 * 48 and max(sizes) == 48 * 48
    )  # the former code mirrored 216 x 166 pixels


def test_tile_by_tile_outputs_equal_the_full_probabilities(ckpt):
    """Labels and 8-bit maps filled tile by tile match the former whole-tensor path (softmax per tile may differ
    from one over the whole image in the last bit only: vectorised and scalar exp)."""
    model, meta = load_checkpoint(ckpt)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (70, 45, 3), dtype=np.uint8)
    dev = torch.device("cpu")
    for tile in (None, 16, 32):
        probs = predict_probs(model, image, meta.mean, meta.std, dev, 1.7, tile, 8)
        with torch.inference_mode():  # the former path: the whole normalised image, then one softmax
            x = (torch.from_numpy(image).permute(2, 0, 1).float().div(255) - 0.5) / 0.25
            logits = model(x[None]) if tile is None else reference_tiled(model, x[None], tile, 8)
            ref = (logits[0] / 1.7).softmax(0)
        assert (torch.equal if tile is None else lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-6))(
            probs, ref
        )
        clear = (ref[1] - ref[0]).abs().numpy() > 1e-5  # not a tie
        labels, maps = predict_labels(model, image, meta.mean, meta.std, dev, 1.7, tile, 8, [1])
        np.testing.assert_array_equal(labels[clear], ref.argmax(0).numpy()[clear])
        expected = (ref[1] * 255).round().byte().numpy().astype(int)
        assert np.abs(maps[0].astype(int) - expected).max() <= 1 and (maps[0] == expected).mean() > 0.99
        labels, _ = predict_labels(model, image, meta.mean, meta.std, dev, 1.7, tile, 8, [0], threshold=0.4)
        clear = np.abs(ref[0].numpy() - 0.4) > 1e-5
        np.testing.assert_array_equal(labels[clear], np.where(ref[0].numpy() >= 0.4, 0, 1)[clear])


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_in_row_blocks_equals_the_whole_image_formula(channels):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (1100, 300, channels), dtype=np.uint8)  # several row blocks
    mask = rng.integers(0, 5, (1100, 300)).astype(np.uint8)
    palette = [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
    ]  # label 4 is clipped to the last colour
    rgb = np.repeat(image, 3, axis=2) if channels == 1 else image
    ref = rgb.astype(np.float32)
    fg = mask > 0
    ref[fg] = 0.6 * ref[fg] + 0.4 * np.asarray(palette, np.float32)[np.clip(mask, 0, 3)][fg]
    before = image.copy()
    got = overlay(image, mask, palette, alpha=0.4)
    np.testing.assert_array_equal(got, ref.round().astype(np.uint8))
    np.testing.assert_array_equal(image, before)  # the input is not modified

"""``seglab predict`` on 16-bit, float and multi-band images: the checkpoint's recorded normalisation (worked out
by hand here), tiles equal to the whole image, GeoTIFF masks aligned with their image (rasterio, tifffile),
pictures through the normalisation, ``--display-bands``, and an ONNX export of an N-band model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from nband import dataset_norm, make_checkpoint, normalised, twelve_bit  # tests/nband.py
from PIL import Image

from seglab.checkpoint import load_checkpoint
from seglab.data.io import read_geotags
from seglab.data.normalize import Normalization
from seglab.engine.predict import predict
from seglab.inference import overlay, palette_of, predict_tiled


def by_hand(ckpt: Path, raw: np.ndarray) -> torch.Tensor:
    """Logits (2, H, W) of the checkpoint's model on the hand-normalised image."""
    model, meta = load_checkpoint(ckpt)
    with torch.inference_mode():
        return model(normalised(meta.normalization, raw)[None])[0]


def mask_of(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def assert_labels(got: np.ndarray, logits: torch.Tensor) -> None:
    """``got`` is the argmax of ``logits`` wherever the two classes are not tied (a softmax may round a tie)."""
    clear = (logits[1] - logits[0]).abs().numpy() > 1e-5
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], logits.argmax(0).numpy()[clear])


@pytest.fixture(scope="module")
def one_band(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("c1"), dataset_norm(1))


@pytest.fixture(scope="module")
def five_band(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("c5"), dataset_norm(5), seed=1)


def test_uint16_one_band_is_normalised_as_the_checkpoint_records_whole_and_tiled(one_band, tmp_path) -> None:
    raw = twelve_bit((40, 52, 1))
    Image.fromarray(raw[..., 0]).save(tmp_path / "cells.png")  # a 16-bit grayscale PNG (mode I;16)
    tifffile.imwrite(tmp_path / "cells2.tif", raw[..., 0], compression="zlib")
    logits = by_hand(one_band, raw)
    expected = logits.argmax(0).numpy()
    assert 0 < expected.mean() < 1  # both classes: a wrong normalisation shows
    wrong = by_hand_scaled(one_band, raw)  # the 8-bit habit, /65535: another answer
    assert (wrong != expected).any()
    predict(one_band, [tmp_path / "cells.png", tmp_path / "cells2.tif"], tmp_path / "out", progress=False)
    assert_labels(mask_of(tmp_path / "out" / "cells_mask.png"), logits)
    assert_labels(mask_of(tmp_path / "out" / "cells2_mask.png"), logits)
    # tile by tile: each tile normalised on its own equals the library's overlap-tile of the whole input
    predict(one_band, [tmp_path / "cells.png"], tmp_path / "tiled", progress=False, tile=16, overlap=8)
    model, _ = load_checkpoint(one_band)
    tiled = predict_tiled(model, normalised(dataset_norm(1), raw)[None], 16, 8)[0].argmax(0).numpy()
    np.testing.assert_array_equal(mask_of(tmp_path / "tiled" / "cells_mask.png"), tiled)


def by_hand_scaled(ckpt: Path, raw: np.ndarray) -> np.ndarray:
    model, meta = load_checkpoint(ckpt)
    n = meta.normalization
    x = (torch.from_numpy(raw.astype(np.float32) / 65535).permute(2, 0, 1) - n.mean[0]) / n.std[0]
    with torch.inference_mode():
        return model(x[None])[0].argmax(0).numpy()


def test_five_band_npy_and_tiff_inputs(five_band, tmp_path) -> None:
    raw = twelve_bit((36, 44, 5), seed=3)
    np.save(tmp_path / "a.npy", raw)
    tifffile.imwrite(tmp_path / "b.tif", raw, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(raw, 2, 0), photometric="minisblack")  # bands as pages
    logits = by_hand(five_band, raw)
    expected = logits.argmax(0).numpy()
    assert 0 < expected.mean() < 1
    shuffled = by_hand(five_band, raw[..., [3, 1, 2, 0, 4]]).argmax(0).numpy()
    assert (shuffled != expected).any()  # the bands' order matters to this model
    out = tmp_path / "out"
    predict(five_band, [tmp_path / n for n in ("a.npy", "b.tif", "c.tif")], out, progress=False)
    for stem in "abc":
        assert_labels(mask_of(out / f"{stem}_mask.png"), logits)


def test_geotiff_mask_is_a_geotiff_on_the_same_grid(tmp_path) -> None:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    ckpt = make_checkpoint(tmp_path / "c3", dataset_norm(3), seed=2)
    raw = twelve_bit((3, 40, 48), seed=4)
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)  # 10 m pixels, UTM 33N
    profile = {"driver": "GTiff", "width": 48, "height": 40, "count": 3, "dtype": "uint16"}
    with rasterio.open(tmp_path / "scene.tif", "w", **profile, crs="EPSG:32633", transform=transform) as dst:
        dst.write(raw)
    tifffile.imwrite(tmp_path / "plain.tif", np.moveaxis(raw, 0, 2), photometric="rgb")  # no geotags
    out = tmp_path / "out"
    records = predict(ckpt, [tmp_path / "scene.tif", tmp_path / "plain.tif"], out, progress=False)
    assert records[0]["mask"] == str(out / "scene_mask.tif") and not (out / "scene_mask.png").exists()
    assert records[1]["mask"] == str(out / "plain_mask.png")
    with rasterio.open(tmp_path / "scene.tif") as src, rasterio.open(out / "scene_mask.tif") as mask:
        assert mask.transform == src.transform and mask.crs == src.crs and mask.crs.to_epsg() == 32633
        assert (mask.width, mask.height, mask.count, mask.dtypes[0]) == (48, 40, 1, "uint8")
        labels = mask.read(1)
    assert read_geotags(out / "scene_mask.tif") == read_geotags(tmp_path / "scene.tif") != []
    assert_labels(labels, by_hand(ckpt, np.moveaxis(raw, 0, 2)))
    np.testing.assert_array_equal(mask_of(out / "plain_mask.png"), labels)  # the same pixels, the same mask
    assert (out / "scene_overlay.png").exists()  # pictures stay PNG
    # predicting again over its own outputs: the .tif mask is recognised as ours, never taken as an input
    again = predict(ckpt, [tmp_path / "scene.tif", out], out, progress=False)
    assert len(again) == 1


def test_overlay_of_16_bit_and_display_bands(five_band, tmp_path, run_cli) -> None:
    raw = twelve_bit((30, 34, 5), seed=5)
    np.save(tmp_path / "m.npy", raw)
    _, meta = load_checkpoint(five_band)
    code, _, err = run_cli(
        "predict", five_band, tmp_path / "m.npy", "--out", tmp_path / "o1", "--no-progress"
    )
    assert code == 0, err
    first3 = meta.normalization.display(raw)  # default: bands 1, 2, 3
    labels = mask_of(tmp_path / "o1" / "m_mask.png")
    assert_labels(labels, by_hand(five_band, raw))
    got = np.array(Image.open(tmp_path / "o1" / "m_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(got, overlay(first3, labels, palette_of(meta)))
    code, _, err = run_cli(
        "predict", five_band, tmp_path / "m.npy", "--out", tmp_path / "o2", "--display-bands", "4,3,2"
    )
    assert code == 0, err
    chosen = meta.normalization.display(raw, [3, 2, 1])
    assert not np.array_equal(chosen, first3)
    got = np.array(Image.open(tmp_path / "o2" / "m_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(got, overlay(chosen, labels, palette_of(meta)))
    for bad in ("4,3", "0", "a,b,c"):  # at parse time
        code, _, err = run_cli(
            "predict", five_band, tmp_path / "m.npy", "--out", tmp_path / "o3", "--display-bands", bad
        )
        assert code == 2 and "--display-bands" in err and len(err.strip().splitlines()) <= 2, err
    code, _, err = run_cli(
        "predict", five_band, tmp_path / "m.npy", "--out", tmp_path / "o3", "--display-bands", "6,3,2"
    )
    assert code == 2 and "1..5" in err and "Traceback" not in err and not (tmp_path / "o3").exists()


def test_eight_bit_overlay_is_unchanged(tiny_ckpt, tmp_path) -> None:
    """8-bit RGB: the overlay blends the image as it is (the former output, byte for byte)."""
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "p.png")
    predict(tiny_ckpt, [tmp_path / "p.png"], tmp_path / "o", progress=False)
    _, meta = load_checkpoint(tiny_ckpt)
    labels = mask_of(tmp_path / "o" / "p_mask.png")
    got = np.array(Image.open(tmp_path / "o" / "p_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(got, overlay(img, labels, palette_of(meta)))


def test_onnx_export_of_a_five_band_model_predicts_as_the_checkpoint(five_band, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from seglab.checkpoint import read_meta
    from seglab.engine.export import export_checkpoint

    export_checkpoint(five_band, tmp_path / "model.onnx", "onnx")
    meta = read_meta(tmp_path / "model.onnx")
    assert meta.normalization == dataset_norm(5) and meta.in_channels == 5
    raw = twelve_bit((32, 40, 5), seed=7)
    tifffile.imwrite(tmp_path / "x.tif", raw, photometric="minisblack", planarconfig="contig")
    predict(five_band, [tmp_path / "x.tif"], tmp_path / "pt", progress=False)
    predict(tmp_path / "model.onnx", [tmp_path / "x.tif"], tmp_path / "onnx", progress=False)
    np.testing.assert_array_equal(
        mask_of(tmp_path / "onnx" / "x_mask.png"), mask_of(tmp_path / "pt" / "x_mask.png")
    )


def test_ensemble_member_of_other_statistics_sees_its_own_input(tmp_path) -> None:
    """``--ensemble`` members normalise alike through one input: a member of another dataset range and
    statistics gets, from the first's model input, exactly its own normalisation of the raw image."""
    from seglab.errors import CheckpointError
    from seglab.inference.predictor import _renormalised

    a, b = dataset_norm(3), Normalization("range", [0.0] * 3, [4095.0] * 3, [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    _, meta_a = load_checkpoint(make_checkpoint(tmp_path / "a", a))
    model_b, meta_b = load_checkpoint(make_checkpoint(tmp_path / "b", b, seed=1))
    raw = twelve_bit((24, 28, 3), seed=8)
    with torch.inference_mode():
        got = _renormalised(model_b, meta_a, meta_b, "b")(normalised(a, raw)[None])
        want = model_b(normalised(b, raw)[None])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert _renormalised(model_b, meta_b, meta_b, "b") is model_b
    meta_b.normalize = Normalization("image", [], [], b.mean, b.std, [1.0, 99.8]).to_dict()
    with pytest.raises(CheckpointError, match="per-image stretch"):
        _renormalised(model_b, meta_a, meta_b, "b")


def test_resize_acts_on_the_float_unit_image(tmp_path) -> None:
    """With ``data.resize`` a 16-bit image is resized as float unit values (never through 8 bits), then
    standardised; the logits come back to the image's size before the softmax."""
    import torch.nn.functional as F

    from seglab.checkpoint import read_meta, write_sidecar
    from seglab.data.transforms import resize_image
    from seglab.inference import image_probs

    ckpt = make_checkpoint(tmp_path / "r", dataset_norm(1))
    meta = read_meta(ckpt)
    meta.resize = {"scale": 0.5}
    write_sidecar(ckpt, meta)
    model, meta = load_checkpoint(ckpt)
    raw = twelve_bit((40, 52, 1), seed=9)
    n = meta.normalization
    unit = torch.from_numpy(n.unit(raw)).permute(2, 0, 1)
    assert unit.dtype == torch.float32
    small = resize_image(unit, (20, 26))
    x = (small - n.mean[0]) / n.std[0]
    with torch.inference_mode():
        want = F.interpolate(model(x[None]), size=(40, 52), mode="bilinear", align_corners=False)[0].softmax(
            0
        )
        got, _ = image_probs(model, meta, raw, torch.device("cpu"))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

"""Band statistics of a data set: exact against NumPy, of the training split only, cached on disk (a second run
reads no image), printed by `seglab data check`; and ``data.normalize`` resolved from them for a run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

import seglab.data.scan as scan_mod
from seglab.config import Config
from seglab.data.check import check, format_check
from seglab.data.io import save_png
from seglab.data.normalize import band_stats
from seglab.data.scan import band_stats_of, scan_folder
from seglab.errors import ConfigError

BBBC039 = Path(__file__).resolve().parents[3] / "shared" / "data" / "bbbc039-nuclei"
QS = (0.5, 1.0, 50.0, 99.0, 99.5, 99.9)


def twelve_bit_set(root: Path, n: int = 6, bands: int = 2) -> Path:
    """n 2-band 12-bit TIFFs (band 2 brighter), binary masks, splits/: train 0..3, val 4, test 5."""
    rng = np.random.default_rng(1)
    for i in range(n):
        arr = rng.integers(100, 4096, (12, 10, bands), dtype=np.uint16)
        arr[..., -1] = np.minimum(arr[..., -1] + 3000 * (i >= 4), 65535)  # val and test images differ a lot
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "images" / f"{i}.tif", arr, photometric="minisblack", planarconfig="contig")
        save_png(root / "masks" / f"{i}.png", (np.eye(12, 10) * 255).astype(np.uint8))
    (root / "splits").mkdir()
    for name, stems in (("train", "0123"), ("val", "4"), ("test", "5")):
        (root / "splits" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


def test_band_stats_equal_numpy_on_uint16():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16) for _ in range(3)]
    images.append(rng.integers(200, 300, (4, 5, 3), dtype=np.uint16))  # another size
    stats = band_stats(images, QS)
    flat = np.concatenate([a.reshape(-1, 3) for a in images]).astype(np.float64)
    assert stats.dtype == "uint16" and stats.images == 4 and stats.pixels == flat.shape[0]
    assert stats.min == flat.min(0).tolist() and stats.max == flat.max(0).tolist()
    assert np.allclose(stats.mean, flat.mean(0), rtol=1e-12) and np.allclose(
        stats.std, flat.std(0), rtol=1e-9
    )
    for q in QS:
        assert stats.percentile(q) == np.percentile(flat, q, axis=0, method="inverted_cdf").tolist(), q


def test_statistics_are_of_the_training_split_and_cached(tmp_path, monkeypatch):
    root = twelve_bit_set(tmp_path / "d")
    scan = check(root)
    assert scan.problems == [] and scan.dtype == "uint16" and scan.in_channels == 2
    train = [tifffile.imread(root / "images" / f"{i}.tif") for i in range(4)]
    flat = np.concatenate([a.reshape(-1, 2) for a in train]).astype(np.float64)
    assert scan.stats.images == 4 and scan.stats.max == flat.max(0).tolist()  # not the bright val/test images
    assert scan.stats.percentile(99.5) == np.percentile(flat, 99.5, axis=0, method="inverted_cdf").tolist()
    read = []
    real = scan_mod.read_image
    monkeypatch.setattr(scan_mod, "read_image", lambda p, c=None: read.append(p) or real(p, c))
    again = band_stats_of(scan_folder(root), ["0", "1", "2", "3"])
    assert read == [] and again == scan.stats  # from the cache: no image read
    st = os.stat(root / "images" / "2.tif")
    os.utime(root / "images" / "2.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert band_stats_of(scan_folder(root), ["0", "1", "2", "3"]) == scan.stats and len(read) == 4


def test_data_check_prints_each_band_and_the_default_normalisation(tmp_path):
    root = twelve_bit_set(tmp_path / "d")
    text = format_check(check(root))
    flat = np.concatenate([tifffile.imread(root / "images" / f"{i}.tif").reshape(-1, 2) for i in range(4)])
    assert "bands: 2 of uint16 (splits/train.txt, 4 images, 480 pixels per band):" in text
    row = next(line for line in text.splitlines() if line.startswith("  2 "))
    p1, p50, p99, p999 = (np.percentile(flat[:, 1], q, method="inverted_cdf") for q in (1, 50, 99, 99.9))
    assert row.split() == [
        "2",
        "uint16",
        f"{flat[:, 1].min():g}..{flat[:, 1].max():g}",
        *(f"{v:.6g}" for v in (p1, p50, p99, p999)),
        f"{flat[:, 1].mean():.6g}",
        f"{flat[:, 1].astype(np.float64).std():.6g}",
    ]
    lo, hi = np.percentile(flat[:, 0], [0.5, 99.5], method="inverted_cdf")
    line = next(line for line in text.splitlines() if line.startswith("default normalisation"))
    assert f"dataset (the training images' 0.5th..99.5th percentiles): band 1: {lo:g}..{hi:g} -> 0..1" in line


def test_data_check_of_an_8_bit_set_says_imagenet(shapes_dir):
    text = format_check(check(shapes_dir))
    assert "bands: 3 of uint8" in text
    assert "default normalisation (data.normalize auto): values / 255, then ImageNet mean and std" in text


def test_data_check_reads_the_bbbc039_nuclei():
    if not (BBBC039 / "images").is_dir():
        pytest.skip(f"{BBBC039} is not available")
    lines = format_check(check(BBBC039)).splitlines()
    assert lines[0] == "format: folder (detected)"
    assert lines[1].endswith("200 image/mask pairs, in_channels 1") and lines[-1] == "no problems found"
    assert "bands: 1 of uint16 (splits/train.txt, 100 images, 36,192,000 pixels per band):" in lines
    assert any(line.startswith("default normalisation (data.normalize auto): dataset") for line in lines)


def test_run_normalization_resolves_data_normalize_from_the_training_split(tmp_path):
    from seglab.engine.data import run_normalization

    root = twelve_bit_set(tmp_path / "d")
    scan = scan_folder(root)
    train = ["0", "1", "2", "3"]
    auto = run_normalization(Config().override([f"data.root={root}"]), scan, train)
    flat = np.concatenate([tifffile.imread(root / "images" / f"{i}.tif").reshape(-1, 2) for i in range(4)])
    lo, hi = np.percentile(flat, [0.5, 99.5], axis=0, method="inverted_cdf")
    assert auto.mode == "dataset" and auto.lo == lo.tolist() and auto.hi == hi.tolist()
    assert np.allclose(auto.mean, (flat.mean(0) - lo) / (hi - lo))
    fixed = run_normalization(
        Config().override([f"data.root={root}", "data.normalize={mode: range, range: [0, 4095]}"]),
        scan,
        train,
    )
    assert fixed.lo == [0.0, 0.0] and fixed.hi == [4095.0, 4095.0]
    with pytest.raises(ConfigError, match="data.normalize imagenet divides 8-bit values by 255"):
        run_normalization(Config().override([f"data.root={root}", "data.normalize=imagenet"]), scan, train)
    with pytest.raises(ConfigError, match="data.normalize must be one of"):
        run_normalization(Config().override([f"data.root={root}", "data.normalize=zscore"]), scan, train)

"""Instance maps in the folder format: scanned and checked, carried through the paired transforms (nearest
neighbour, ids kept, 0 filled in), and turned into the interior/boundary target after augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.config import DataConfig
from seglab.data.check import format_check
from seglab.data.folder import FolderDataset, scan_folder
from seglab.data.io import save_png
from seglab.data.transforms import build_transform
from seglab.errors import DataError
from seglab.instances.postprocess import interior_boundary_target


def test_scan_counts_objects_and_data_check_reports_them(nuclei_dir):
    scan = scan_folder(nuclei_dir, deep=True)
    assert not scan.problems
    truth = {
        p.stem: len(np.unique(np.array(Image.open(p)))) - 1 for p in (nuclei_dir / "instances").iterdir()
    }
    assert scan.objects == truth
    counts = sorted(truth.values())
    text = format_check(scan)
    assert (
        f"instances: 24 label maps (instances/), {sum(counts)} objects, {counts[0]}..{counts[-1]} per image"
        in text
    )


def _copy(nuclei_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(nuclei_dir, root)
    return root


def test_missing_small_and_rgb_instance_maps_are_problems(nuclei_dir, tmp_path):
    root = _copy(nuclei_dir, tmp_path)
    (root / "instances" / "n00.png").unlink()
    Image.fromarray(np.zeros((40, 48), np.uint16)).save(root / "instances" / "n01.png")
    save_png(root / "instances" / "n02.png", np.zeros((48, 48, 3), np.uint8))
    save_png(root / "instances" / "stray.png", np.zeros((48, 48), np.uint8))
    problems = scan_folder(root, deep=True).problems
    assert any("n00.jpg" in p or ("n00" in p and "has no instance map" in p) for p in problems)
    assert any("n01.png is 48x40 but mask" in p for p in problems)
    assert any("n02.png has mode RGB" in p for p in problems)
    assert any("stray.png has no image/mask pair" in p for p in problems)
    with pytest.raises(DataError, match="has no instance map"):
        FolderDataset(root, "train")


def test_interior_boundary_target_needs_instance_maps(shapes_dir):
    with pytest.raises(DataError, match="needs instance maps in .*instances"):
        FolderDataset(shapes_dir, "train", target="interior_boundary")


def test_transforms_carry_instance_maps_with_ids_and_geometry_of_the_mask(nuclei_dir):
    cfg = DataConfig(crop_size=40, scale=(0.8, 1.3), rotation=30.0, elastic=3.0, rot90=True)
    ds = FolderDataset(nuclei_dir, "train", build_transform(cfg, 3, train=True), instances=True)
    for i in range(len(ds)):
        torch.manual_seed(i)
        image, mask, inst = ds[i]
        raw = ds.load_instances(i)
        assert inst.dtype == torch.int64 and inst.shape == mask.shape == image.shape[-2:]
        assert set(inst.unique().tolist()) <= set(np.unique(raw).tolist()) | {
            0
        }  # nearest neighbour: ids kept
        labelled = mask != 255
        # the instance map moved exactly as the mask: an object wherever the mask says nucleus, 0 where filled in
        assert torch.equal(inst[labelled] > 0, mask[labelled] == 1)
        assert (inst[~labelled] == 0).all()


def test_interior_boundary_target_is_made_after_augmentation(nuclei_dir):
    cfg = DataConfig(crop_size=40, rotation=20.0, hflip=True)
    transform = build_transform(cfg, 3, train=True)
    ds = FolderDataset(nuclei_dir, "train", transform, target="interior_boundary", boundary_width=2)
    with_inst = FolderDataset(nuclei_dir, "train", transform, target="interior_boundary", instances=True)
    assert ds.classes.names == ["background", "interior", "boundary"] and ds.num_classes == 3
    for i in range(4):
        torch.manual_seed(i)
        _, target = ds[i]
        torch.manual_seed(i)
        _, target2, inst = with_inst[i]
        assert torch.equal(target, target2)
        expected = torch.from_numpy(interior_boundary_target(inst.numpy(), width=2))
        keep = target != 255
        assert torch.equal(target[keep], expected[keep])
        assert {0, 1, 2} >= set(target[keep].unique().tolist()) >= {0, 1, 2}
    # untransformed: the target of the stored map, at its own resolution
    _, mask = FolderDataset(nuclei_dir, "train", target="interior_boundary").load(0)
    assert np.array_equal(mask, interior_boundary_target(ds.load_instances(0), width=2))


def test_sixteen_bit_png_round_trip(tmp_path):
    arr = np.array([[0, 1, 300], [65535, 7, 0]], np.uint16)
    save_png(tmp_path / "m.png", arr)
    back = Image.open(tmp_path / "m.png")
    assert back.mode.startswith("I") and np.array_equal(np.array(back), arr)

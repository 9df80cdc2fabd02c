"""`seglab data check` names broken symbolic links and instance maps whose objects lie on mask background
(issue 26): both were passed over without a word."""

import os

import numpy as np
import pytest
from PIL import Image, ImageFile

from seglab.data.check import check, format_check
from seglab.data.folder import scan_folder
from seglab.data.io import save_png
from seglab.errors import DataError

MASK = np.zeros((16, 16), np.uint8)
MASK[4:12, 4:12] = 1  # one square object of class 1
OBJECT = np.zeros((16, 16), np.uint16)
OBJECT[4:12, 4:12] = 1  # the same square as instance 1


def write(root, n=3, instances=None):
    """n images with MASK, and with ``instances`` (a list of maps) an instances/ folder."""
    for i in range(n):
        save_png(root / "images" / f"{i:02d}.png", np.full((16, 16, 3), 50, np.uint8))
        save_png(root / "masks" / f"{i:02d}.png", MASK)
        if instances is not None:
            save_png(root / "instances" / f"{i:02d}.png", instances[i])
    return root


@pytest.mark.parametrize("sub", ["images", "masks", "instances"])
def test_a_dangling_symbolic_link_is_named(tmp_path, sub):
    root = write(tmp_path / "d", instances=[OBJECT] * 3)
    assert check(root).problems == []
    os.symlink(tmp_path / "gone.png", root / sub / "03.png")
    problems = check(root).problems
    assert problems[0] == (
        f"1 symbolic link leads nowhere in {root / sub}: 03.png (-> {tmp_path / 'gone.png'}, which does not "
        f"exist); repair it or remove it"
    ), problems
    with pytest.raises(DataError, match="symbolic link leads nowhere"):  # training's scan refuses it too
        scan_folder(root).raise_problems()


def test_looping_links_are_named_and_many_are_summarised(tmp_path):
    root = write(tmp_path / "d")
    os.symlink("b.png", root / "masks" / "a.png")
    os.symlink("a.png", root / "masks" / "b.png")
    for i in range(3):
        os.symlink(f"/nowhere/{i}.png", root / "masks" / f"x{i}.png")
    problems = check(root).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        f"5 symbolic links lead nowhere in {root / 'masks'}: a.png (a loop of links), b.png (a loop of links), "
        f"x0.png (-> /nowhere/0.png, which does not exist) and 2 more; repair them"
    ), problems


def test_a_link_to_an_existing_file_is_fine(tmp_path):
    root = write(tmp_path / "d")
    (root / "images" / "00.png").rename(tmp_path / "real.png")
    os.symlink(tmp_path / "real.png", root / "images" / "00.png")
    assert check(root).problems == []


def test_instance_maps_lying_on_mask_background_are_named(tmp_path):
    shifted = np.zeros((16, 16), np.uint16)
    shifted[0:4, :] = 1  # 64 px, all on background
    shifted[4:6, 4:12] = 2  # 16 px on the object: 80 % on background
    root = write(tmp_path / "d", instances=[OBJECT, shifted, OBJECT])
    scan = check(root)
    expected = (
        f"instance map {root / 'instances' / '01.png'}: 80 % of its object pixels lie on background ('class0') of "
        f"mask {root / 'masks' / '01.png'}"
    )
    assert len(scan.problems) == 1 and scan.problems[0].startswith(expected), scan.problems
    assert expected in format_check(scan)
    assert check(root).problems == scan.problems  # from the scan cache too


def test_half_on_background_passes_and_a_changed_mask_is_compared_again(tmp_path, monkeypatch):
    half = OBJECT.copy()
    half[0:4, 0:16] = 2  # 64 px on background, 64 px on the object: not more than half
    root = write(tmp_path / "d", instances=[half, OBJECT, OBJECT])
    assert check(root).problems == []
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: (decoded.append(self.filename), load(self))[1]
    )
    assert check(root).problems == [] and not any("instances" in str(f) for f in decoded if f)  # cached
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "01.png")  # the object is erased
    os.utime(root / "masks" / "01.png", ns=(1, 1))  # a new mtime, whatever the clock's resolution
    problems = check(root).problems
    assert (
        len(problems) == 1 and "instances/01.png: 100 % of its object pixels lie on background" in problems[0]
    )

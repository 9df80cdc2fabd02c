"""A tiny nuclei-like folder data set with instance maps: bright discs, many touching, on a dark background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def touching_discs(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), instance map uint16 (H, W)): 2-4 pairs of touching discs, each its own id, ids
    scattered over 1..60000 (a 16-bit map); the nuclei's brightness differs, and the dark seam between
    touching discs is faint."""
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), np.uint16)
    image = rng.normal(30, 6, (size, size))
    ids = rng.choice(np.arange(1, 60000), size=8, replace=False)
    k = 0
    for _ in range(int(rng.integers(2, 5))):
        r = float(rng.uniform(4, 6))
        cy, cx = rng.uniform(r + 1, size - 3 * r - 1, size=2)
        angle = rng.uniform(0, np.pi)
        for dy, dx in ((0.0, 0.0), (1.9 * r * np.sin(angle), 1.9 * r * np.cos(angle))):
            disc = (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= r * r
            free = disc & (inst == 0)
            inst[free] = ids[k]
            image[free] = rng.uniform(150, 230)
            k += 1
    rgb = np.clip(image, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    return rgb, inst


@pytest.fixture(scope="session")
def nuclei_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images of 48x48 (16 train, 8 test) with masks/ (0/255) and 16-bit instances/."""
    from PIL import Image

    from seglab.data.io import save_png

    root = tmp_path_factory.mktemp("nuclei") / "data"
    rng = np.random.default_rng(0)
    stems = [f"n{i:02d}" for i in range(24)]
    for stem in stems:
        image, inst = touching_discs(rng)
        save_png(root / "images" / f"{stem}.png", image)
        save_png(root / "masks" / f"{stem}.png", np.where(inst > 0, 255, 0).astype(np.uint8))
        (root / "instances").mkdir(parents=True, exist_ok=True)
        Image.fromarray(inst).save(root / "instances" / f"{stem}.png")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(stems[:16]) + "\n")
    (root / "splits" / "test.txt").write_text("\n".join(stems[16:]) + "\n")
    return root

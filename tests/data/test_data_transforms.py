import numpy as np
import pytest
import torch

from seglab.config import DataConfig
from seglab.data.transforms import build_transform, default_normalization, pad_collate


def blocky_pair(seed=0, size=48):
    """An image of 4x4-pixel blocks and the mask that is a function of it: label = red channel > 127."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    image = blocks.repeat(4, 0).repeat(4, 1)
    return image, (image[..., 0] > 127).astype(np.int64)


def denormalize(x, mean, std):
    return (x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]) * 255


def test_geometric_augmentation_keeps_image_and_mask_aligned():
    cfg = DataConfig(scale=(0.6, 1.4), rotation=25, crop_size=40, hflip=True, vflip=True)
    t = build_transform(cfg, 3, train=True)
    torch.manual_seed(0)
    changed = 0
    for seed in range(20):
        image, mask = blocky_pair(seed)
        x, y = t(image, mask)
        assert (
            x.shape == (3, 40, 40)
            and x.dtype == torch.float32
            and y.shape == (40, 40)
            and y.dtype == torch.int64
        )
        red = denormalize(x, t.mean, t.std)[0].round()
        valid = y != cfg.ignore_index
        assert valid.float().mean() > 0.3
        # The mask is still the same function of the (transformed) image on every valid pixel.
        assert torch.equal(y[valid], (red[valid] > 127).long())
        assert set(y.unique().tolist()) <= {0, 1, cfg.ignore_index}  # nearest neighbour: no new labels
        changed += int(not torch.equal(y, torch.from_numpy(mask[:40, :40])))
    assert changed > 15  # the augmentation really moved things


def test_colour_jitter_touches_only_the_image():
    t = build_transform(DataConfig(color_jitter=0.5, hflip=False, vflip=False), 3, train=True)
    t_plain = build_transform(DataConfig(hflip=False, vflip=False), 3, train=False)
    image, mask = blocky_pair(1)
    torch.manual_seed(0)
    x, y = t(image, mask)
    x0, y0 = t_plain(image, mask)
    assert torch.equal(y, y0) and torch.equal(y0, torch.from_numpy(mask))
    assert not torch.allclose(x, x0)


def test_eval_transform_is_normalisation_only():
    image, mask = blocky_pair(2)
    t = build_transform(DataConfig(), 3, train=False)
    x, y = t(image, mask)
    mean, std = default_normalization(3)
    expected = (
        torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]
    ) / (torch.tensor(std)[:, None, None])
    assert torch.allclose(x, expected, atol=1e-6) and torch.equal(y, torch.from_numpy(mask))
    assert default_normalization(1)[0] == [np.mean(mean)]


def test_pad_collate_pads_masks_with_ignore_index():
    batch = [
        (torch.ones(1, 2, 3), torch.zeros(2, 3, dtype=torch.long)),
        (torch.ones(1, 4, 2), torch.ones(4, 2).long()),
    ]
    images, masks = pad_collate(255)(batch)
    assert images.shape == (2, 1, 4, 3) and masks.shape == (2, 4, 3)
    assert images[0, 0, 2:].abs().sum() == 0 and (masks[0, 2:] == 255).all() and (masks[1, :, 2] == 255).all()
    assert (masks[1, :, :2] == 1).all()


def test_elastic_field_is_smooth_and_moves_image_and_mask_alike():
    from torchvision import tv_tensors

    from seglab.data.transforms import GridElastic

    torch.manual_seed(0)
    t = GridElastic(sigma=10.0, grid=3)
    field = t.make_params([tv_tensors.Image(torch.zeros(1, 64, 96))])["displacement"]
    assert field.shape == (1, 64, 96, 2)
    px = torch.stack([field[..., 0] * 96 / 2, field[..., 1] * 64 / 2], -1)  # back to pixels
    assert 3 < px.abs().max() < 60  # displacements of about sigma = 10 px
    assert (px[:, 1:] - px[:, :-1]).abs().max() < 2 and (
        px[:, :, 1:] - px[:, :, :-1]
    ).abs().max() < 2  # smooth

    cfg = DataConfig(elastic=10.0, hflip=False, vflip=False)
    tf = build_transform(cfg, 3, train=True)
    moved = 0
    for seed in range(10):
        image, mask = blocky_pair(seed, size=64)
        image = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)  # the image is the mask
        x, y = tf(image, mask)
        valid = y != cfg.ignore_index
        red = denormalize(x, tf.mean, tf.std)[0]
        # bilinear image vs nearest mask: they agree except on a thin band along the edges
        assert ((red[valid] > 127).long() == y[valid]).float().mean() > 0.95
        moved += int((y != torch.from_numpy(mask)).float().mean() > 0.05)
    assert moved >= 8


def test_weight_maps_move_with_the_mask():
    cfg = DataConfig(scale=(0.7, 1.3), rotation=20, crop_size=40)
    t = build_transform(cfg, 3, train=True)
    torch.manual_seed(1)
    for seed in range(5):
        image, mask = blocky_pair(seed)
        weight = (2.0 * mask + 1).astype(np.float32)  # a known function of the mask
        x, y, w = t(image, mask, weight)
        assert w.dtype == torch.float32 and w.shape == y.shape == (40, 40)
        valid = y != cfg.ignore_index
        assert torch.equal(w[valid], 2.0 * y[valid] + 1) and (w[~valid] == 0).all()
    images, masks, weights = pad_collate(255)([(x, y, w), (x[:, :30, :20], y[:30, :20], w[:30, :20])])
    assert weights.shape == (2, 40, 40) and weights[1, 30:].abs().sum() == 0 and (masks[1, 30:] == 255).all()


def test_rot90_with_flips_reaches_all_eight_symmetries_exactly():
    image = np.arange(9, dtype=np.uint8).reshape(3, 3, 1) * 20
    mask = np.arange(9, dtype=np.int64).reshape(3, 3)
    t = build_transform(DataConfig(rot90=True, hflip=True, vflip=True), 1, train=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        x, y = t(image, mask)
        # still aligned, and no resampling
        assert torch.equal(denormalize(x, t.mean, t.std)[0].round().long(), y * 20)
        seen.add(tuple(y.flatten().tolist()))
    symmetries = {tuple(np.rot90(m, k).flatten().tolist()) for m in (mask, mask.T) for k in range(4)}
    assert seen == symmetries and len(seen) == 8


@pytest.mark.parametrize("percentiles", [(1.0, 99.8), (0.0, 100.0), (25.0, 75.0), (3.3, 50.0)])
def test_stretch_spreads_the_percentiles_over_the_full_range(percentiles):
    from seglab.data.transforms import stretch_image

    rng = np.random.default_rng(0)
    image = rng.integers(10, 60, (37, 41, 3)).astype(np.uint8)
    lo, hi = np.percentile(image, percentiles, method="inverted_cdf")
    want = np.clip((image.astype(np.float64) - lo) * 255 / (hi - lo) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(stretch_image(image, percentiles), want)
    assert stretch_image(image, None) is image
    flat = np.full((5, 5, 1), 7, np.uint8)
    assert np.array_equal(stretch_image(flat, percentiles), flat)  # no spread to stretch: as it is


def test_stretch_is_applied_to_training_and_evaluation_images_and_invert_only_in_training():
    cfg = DataConfig(stretch=(0.0, 100.0), invert=1.0, hflip=False, vflip=False, mean=[0.0], std=[1.0])
    image = np.array([[[50], [60]], [[70], [90]]], np.uint8)
    mask = np.zeros((2, 2), np.int64)
    stretched = np.array([[0, 64], [128, 255]]) / 255  # (x - 50) * 255 / 40, rounded
    x_eval, _ = build_transform(cfg, 1, train=False)(image, mask)
    x_train, _ = build_transform(cfg, 1, train=True)(image, mask)
    np.testing.assert_allclose(x_eval[0].numpy(), stretched, atol=1e-6)
    np.testing.assert_allclose(x_train[0].numpy(), 1 - stretched, atol=1e-6)  # inverted after the stretch

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.inference import predict_tiled, tile_starts


def test_tile_starts_cover_the_image():
    assert tile_starts(10, 16) == [0]
    assert tile_starts(64, 32) == [0, 32]
    assert tile_starts(70, 32) == [0, 32, 38]
    for size in range(1, 80):
        covered = set()
        for s in tile_starts(size, 16):
            covered |= set(range(s, min(s + 16, size)))
        assert covered == set(range(size))


@pytest.mark.parametrize("tile, overlap", [(16, 3), (23, 4), (64, 3)])
def test_no_seams_for_a_local_network(tile, overlap):
    """Three 3x3 convs see 3 pixels each way: with overlap >= 3, tiling equals one pass over the mirrored image."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
    ).eval()
    image = torch.randn(2, 2, 45, 61)
    whole = model(F.pad(image, (overlap,) * 4, mode="reflect"))[..., overlap:-overlap, overlap:-overlap]
    tiled = predict_tiled(model, image, tile=tile, overlap=overlap)
    assert tiled.shape == (2, 3, 45, 61)
    assert torch.allclose(tiled, whole, atol=1e-5)
    if tile < 45:  # too little context shows up as seams
        assert not torch.allclose(predict_tiled(model, image, tile=tile, overlap=1), whole, atol=1e-3)


def test_unet_tiled_prediction_is_close_to_whole_image():
    torch.manual_seed(0)
    model = seglab.create_model("unet", num_classes=3, depth=3, base_channels=4).eval()
    image = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        whole = model(image).argmax(1)
    tiled = predict_tiled(model, image, tile=32, overlap=16).argmax(1)
    assert (tiled == whole).float().mean() > 0.9

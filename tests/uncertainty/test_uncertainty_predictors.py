import copy

import pytest
import torch
from torch import nn

from seglab import create_model, list_models
from seglab.errors import ConfigError
from seglab.uncertainty.functional import UncertaintyResult
from seglab.uncertainty.predictors import (
    TTA,
    Deterministic,
    Ensemble,
    MCDropout,
    add_dropout,
    dropout_mode,
    dropout_modules,
)


def tiny(dropout=0.2, seed=0):
    torch.manual_seed(seed)
    model = create_model("unet", num_classes=3, depth=2, base_channels=4, dropout=dropout)
    model.train()
    with torch.no_grad():  # move the batch-norm running statistics away from their defaults
        model(torch.randn(4, 3, 16, 16) * 2 + 0.5)
    return model.eval()


def images(n=2, h=16, w=20, seed=1):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_mc_dropout_keeps_batch_norm_in_eval_and_restores_modes():
    model = tiny()
    model.encoder.train()  # an unusual mix of modes must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    before = bn_state(model)
    r = MCDropout(model, samples=4, seed=0)(images())
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert r.samples == 4 and r.probs.shape == (2, 3, 16, 20) and r.mask.shape == (2, 16, 20)
    assert r.mutual_information.max() > 0  # dropout made the passes differ
    with dropout_mode(model) as layers:
        assert layers and all(m.training for m in layers)
        assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_mc_dropout_with_p_zero_equals_eval_outputs():
    model = tiny()
    for m in dropout_modules(model):
        m.p = 0.0
    x = images()
    with torch.no_grad():
        expected = model(x).softmax(1)
    r = MCDropout(model, samples=3)(x)
    assert torch.allclose(r.probs, expected, atol=1e-6)
    assert torch.allclose(r.mutual_information, torch.zeros(1), atol=1e-6)


def test_mc_dropout_is_seeded_and_leaves_the_global_rng_alone():
    model, x = tiny(), images()
    state = torch.get_rng_state()
    a = MCDropout(model, samples=3, seed=7)(x)
    assert torch.equal(torch.get_rng_state(), state)
    b = MCDropout(model, samples=3, seed=7)(x)
    c = MCDropout(model, samples=3, seed=8)(x)
    assert torch.equal(a.probs, b.probs) and not torch.equal(a.probs, c.probs)


def test_mc_dropout_streams_the_same_result_as_stacked_samples():
    model, x = tiny(), images()
    torch.manual_seed(3)
    with dropout_mode(model), torch.no_grad():
        samples = torch.stack([model(x).softmax(1) for _ in range(5)])
    torch.manual_seed(3)
    got = MCDropout(model, samples=5, seed=None)(x)
    ref = UncertaintyResult.from_samples(samples)
    for name in ("probs", "entropy", "expected_entropy", "mutual_information", "variance"):
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-6), name


def test_mc_dropout_without_dropout_is_a_clear_error():
    with pytest.raises(ConfigError, match="has no dropout layers.*--add-dropout"):
        MCDropout(tiny(dropout=0.0), samples=2)(images())


@pytest.mark.parametrize("where", ["head", "decoder", ["head", "decoder.blocks.0"]])
def test_add_dropout_keeps_weights_and_eval_outputs(where):
    model, x = tiny(dropout=0.0), images()
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(x)
    add_dropout(model, 0.3, where)
    assert list(model.state_dict()) == keys and len(dropout_modules(model)) >= 1
    with torch.no_grad():
        assert torch.equal(model(x), before)  # eval: the new layers are identities
    r = MCDropout(model, samples=3)(x)
    assert r.mutual_information.max() > 0
    clone = copy.deepcopy(model)  # hooks follow the copy's own dropout layers
    for m in dropout_modules(clone):
        m.p = 0.0
    assert torch.allclose(MCDropout(clone, samples=2)(x).probs, before.softmax(1), atol=1e-6)


def test_add_dropout_errors():
    with pytest.raises(ConfigError, match="has no submodule 'nowhere'"):
        add_dropout(tiny(dropout=0.0), 0.1, "nowhere")
    with pytest.raises(ConfigError, match="has no `head`"):
        add_dropout(nn.Conv2d(3, 3, 1), 0.1)
    with pytest.raises(ConfigError, match=r"within \[0, 1\)"):
        add_dropout(tiny(), 1.0)


# One small model per architecture; no decoder here has HEAD_CLASSES channels, so features and scores differ.
HEAD_CLASSES = 5
EVERY_ARCH = {
    "plain_fcn": {"widths": [4, 8]},
    "fcn": {"encoder": "vgg", "base_channels": 2},
    "segnet": {"depth": 3, "base_channels": 4},
    "unet": {"depth": 3, "base_channels": 4},
    "unetplusplus": {"depth": 3, "base_channels": 4},
    "linknet": {"encoder": "mobilenet", "depth": 3, "base_channels": 4, "final_channels": 8},
    "deeplabv3": {"encoder": "mobilenet", "base_channels": 4, "channels": 8},
    "deeplabv3plus": {"encoder": "mobilenet", "base_channels": 4, "channels": 8},
    "lraspp": {"encoder": "mobilenet", "base_channels": 4, "inter_channels": 8},
    "fpn": {"encoder": "mobilenet", "base_channels": 4, "segmentation_channels": 64, "dropout": 0.0},
    "pspnet": {"encoder": "mobilenet", "base_channels": 4, "channels": 8, "dropout": 0.0},
    "upernet": {"encoder": "mobilenet", "base_channels": 4, "channels": 8, "dropout": 0.0},
    "segformer": {"base_channels": 4, "channels": 8, "dropout": 0.0},
}
CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def test_every_architecture_is_checked_for_head_dropout():
    assert set(EVERY_ARCH) == set(list_models())


@pytest.mark.parametrize("arch", sorted(EVERY_ARCH))
def test_head_dropout_drops_decoder_features_before_the_heads_convs(arch):
    """add_dropout(where="head") drops the decoder's feature channels (never class channels), and it runs
    before every conv of the head; the last conv of the whole model is the head's and gives the classes."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=HEAD_CLASSES, **EVERY_ARCH[arch])
    with torch.no_grad():  # batch-norm statistics of real activations (fresh ones vanish in deep tiny nets)
        model(torch.randn(4, 3, 32, 32))
    add_dropout(model.eval(), 0.5, "head")
    (drop,) = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    events = []
    drop.register_forward_hook(lambda m, args, out: events.append(("dropout", args[0].shape[1])))
    head_convs = {id(m) for m in model.head.modules() if isinstance(m, CONVS)}
    for conv in (m for m in model.modules() if isinstance(m, CONVS)):
        where = "head" if id(conv) in head_convs else "body"
        conv.register_forward_hook(lambda m, args, out, where=where: events.append((where, out.shape[1])))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    dropped = events.index(("dropout", model.decoder.out_channels))
    assert model.decoder.out_channels != HEAD_CLASSES
    head_runs = [i for i, (where, _) in enumerate(events) if where == "head"]
    assert head_runs and min(head_runs) > dropped, events
    assert events[-1] == ("head", HEAD_CLASSES)
    with dropout_mode(model), torch.no_grad():  # and it samples (a mask per image and channel)
        x = torch.randn(4, 3, 32, 32)
        assert not torch.equal(model(x), model(x))


class Pointwise(nn.Module):
    """Flip-equivariant: a 1x1 convolution sees no neighbours."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


def test_tta_maps_flips_back_exactly():
    model, x = Pointwise(), images()
    plain = Deterministic(model)(x)
    tta = TTA(model, flips=("none", "h", "v", "hv"))(x)
    assert tta.samples == 4
    assert torch.allclose(tta.probs, plain.probs, atol=1e-6)
    assert torch.allclose(tta.mutual_information, torch.zeros(1), atol=1e-6)


def test_tta_of_a_real_model_averages_flipped_predictions():
    model, x = tiny(), images()
    got = TTA(model, flips=("none", "h"))(x)
    with torch.no_grad():
        a = model(x).softmax(1)
        b = model(x.flip(-1)).softmax(1).flip(-1)
    assert torch.allclose(got.probs, (a + b) / 2, atol=1e-6)
    scaled = TTA(model, flips=("none",), scales=(0.5, 1.0, 1.5))(images(h=17, w=23))
    assert scaled.probs.shape == (2, 3, 17, 23) and scaled.samples == 3
    assert torch.allclose(scaled.probs.sum(1), torch.ones(1), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown TTA flip 'x'"):
        TTA(model, flips=("x",))


def test_ensemble_averages_members_and_identical_members_agree():
    a, b, x = tiny(seed=0), tiny(seed=1), images()
    with torch.no_grad():
        pa, pb = a(x).softmax(1), b(x).softmax(1)
    r = Ensemble([a, b])(x)
    assert r.samples == 2 and torch.allclose(r.probs, (pa + pb) / 2, atol=1e-6)
    assert torch.allclose(r.variance, ((pa - pb) / 2) ** 2, atol=1e-6)
    assert r.mutual_information.min() > -1e-6 and r.mutual_information.max() > 0
    same = Ensemble([a, copy.deepcopy(a)])(x)
    assert torch.allclose(same.mutual_information, torch.zeros(1), atol=1e-6)
    with torch.no_grad():
        tempered = Ensemble([a], temperatures=[2.0])(x)
        assert torch.allclose(tempered.probs, (a(x) / 2).softmax(1), atol=1e-6)


def test_deterministic_is_one_sample_with_zero_mutual_information():
    model, x = tiny(), images()
    model.train()
    r = Deterministic(model)(x)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(r.probs, model(x).softmax(1), atol=1e-6)
    assert r.samples == 1 and torch.equal(r.mutual_information, torch.zeros_like(r.entropy))

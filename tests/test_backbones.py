"""Contract tests for every registered backbone (difflab.backbones)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from difflab.backbones import BACKBONES, backbone_presets, build_backbone
from difflab.backbones.layers import NoiseEmbedding, num_groups
from difflab.backbones.unet import _attention_levels
from difflab.errors import ConfigError

BIG_PARAMS = 10_000_000  # presets above this are shape-checked on the meta device only


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _data_args(name: str, shape: tuple[int, ...]) -> dict:
    """Constructor arguments that describe the data of shape ``shape`` for backbone ``name``."""
    params = inspect.signature(BACKBONES.get(name)).parameters
    if BACKBONES.meta(name).get("data", "image") == "image":
        args = {"in_channels": shape[1]}
        if "image_size" in params:
            args["image_size"] = tuple(shape[2:])
        return args
    return {"in_features": shape[1]}


def _build(name: str, preset: str | None, shape: tuple[int, ...], **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, preset=preset, **_data_args(name, shape), **kw).eval()


def _perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    """Add noise to every parameter (breaks the zero-initialisations)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def _inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    c = torch.rand(shape[0], generator=g) * 4 - 2.5  # c_noise = ln(sigma)/4 in [-2.5, 1.5]
    return x, c


def _shapes(name: str, preset: str) -> list[tuple[int, ...]]:
    if BACKBONES.meta(name).get("data") == "tabular":
        return [(5, 2), (3, 21)]
    shapes = [(3, 1, 8, 8), (2, 3, 16, 16)]
    if backbone_presets(name)[preset].get("image_size") == 28:
        shapes.append((2, 1, 28, 28))
    return shapes


ALL_CASES = [
    pytest.param(name, preset, shape, id=f"{name}-{preset}-{'x'.join(map(str, shape[1:]))}")
    for name in BACKBONES.names()
    for preset in backbone_presets(name)
    for shape in _shapes(name, preset)
]
# The first preset of each backbone is its smallest one; the behavioural tests use it.
SMALL = {
    "unet": (1, 3, 16, 16),
    "dit": (1, 3, 8, 8),
    "mlp": (1, 21),
}
SMALL_CASES = [
    pytest.param(name, next(iter(backbone_presets(name))), SMALL.get(name, (1, 1, 8, 8)), id=name)
    for name in BACKBONES.names()
]


# ---------------------------------------------------------------------------------------------
# Shape and zero-init, every preset
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, preset, shape", ALL_CASES)
def test_shape_and_zero_init(name, preset, shape):
    with torch.device("meta"):
        net = _build(name, preset, shape)
    if sum(p.numel() for p in net.parameters()) > BIG_PARAMS:  # too big for a CPU unit test
        with torch.device("meta"):
            out = net(torch.empty(shape), torch.empty(shape[0]))
        assert out.shape == shape
        return
    net = _build(name, preset, shape)
    x, c = _inputs(shape)
    with torch.no_grad():
        out = net(x, c)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert torch.count_nonzero(out) == 0  # zero-initialised output layer
        _perturb(net.output_layer)
        assert torch.count_nonzero(net(x, c)) > 0


# ---------------------------------------------------------------------------------------------
# Behaviour, smallest preset of each backbone
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, preset, shape", SMALL_CASES)
def test_gradient_reaches_first_layer(name, preset, shape):
    net = _build(name, preset, (2, *shape[1:])).train()
    _perturb(net.output_layer)
    x, c = _inputs((2, *shape[1:]))
    net(x, c).square().sum().backward()
    grad = net.input_layer.weight.grad
    assert grad is not None and torch.count_nonzero(grad) > 0


@pytest.mark.parametrize("name, preset, shape", SMALL_CASES)
def test_class_conditioning_and_null_label(name, preset, shape):
    n = 3
    net = _build(name, preset, shape, num_classes=n)
    _perturb(net)
    x, c = _inputs((1, *shape[1:]))
    x, c = x.expand(n + 1, *shape[1:]), c.expand(n + 1)
    with torch.no_grad():
        out = net(x, c, torch.arange(n + 1))  # labels 0, 1, 2 and the null label 3
        uncond = net(x, c, None)
    for i in range(n + 1):
        for j in range(i):
            assert not torch.allclose(out[i], out[j], atol=1e-6), (i, j)
    torch.testing.assert_close(uncond, out[n:].expand_as(uncond), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, preset, shape", SMALL_CASES)
def test_labels_ignored_without_classes(name, preset, shape):
    net = _build(name, preset, (2, *shape[1:]))
    _perturb(net)
    x, c = _inputs((2, *shape[1:]))
    with torch.no_grad():
        torch.testing.assert_close(net(x, c, torch.tensor([0, 1])), net(x, c))


@pytest.mark.parametrize("name, preset, shape", SMALL_CASES)
def test_noise_cond_changes_output(name, preset, shape):
    net = _build(name, preset, shape)
    _perturb(net)
    x, _ = _inputs((1, *shape[1:]))
    x = x.expand(3, *shape[1:])
    c = torch.tensor([-2.0, -1.99, 1.0])  # includes sigmas only ~4 % apart
    with torch.no_grad():
        out = net(x, c)
    assert not torch.allclose(out[0], out[1], atol=1e-6)
    assert not torch.allclose(out[0], out[2], atol=1e-6)


@pytest.mark.parametrize("name, preset, shape", SMALL_CASES)
def test_batch_independence(name, preset, shape):
    net = _build(name, preset, shape, num_classes=2, dropout=0.2)  # eval mode: dropout off
    _perturb(net)
    x, c = _inputs((4, *shape[1:]))
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        batch = net(x, c, y)
        for i in range(4):
            single = net(x[i : i + 1], c[i : i + 1], y[i : i + 1])
            torch.testing.assert_close(single, batch[i : i + 1], rtol=1e-4, atol=1e-5)


def test_unet_channels_last():
    shape = (2, 3, 16, 16)
    net = _build("unet", "tiny", shape)
    _perturb(net)
    x, c = _inputs(shape)
    with torch.no_grad():
        ref = net(x, c)
        out = net(x.contiguous(memory_format=torch.channels_last), c)
        net = net.to(memory_format=torch.channels_last)
        out2 = net(x.contiguous(memory_format=torch.channels_last), c)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out2, ref, rtol=1e-4, atol=1e-5)


def test_unet_resample_avgpool_and_heads():
    shape = (2, 1, 8, 8)
    net = _build("unet", "tiny", shape, resample="avgpool", head_channels=None, num_heads=2)
    _perturb(net)
    x, c = _inputs(shape)
    assert net(x, c).shape == shape


# ---------------------------------------------------------------------------------------------
# Factory and errors
# ---------------------------------------------------------------------------------------------


def test_registry_and_presets():
    assert {"unet", "dit", "mlp"} <= set(BACKBONES.names())
    for name in BACKBONES.names():
        assert BACKBONES.meta(name)["data"] in ("image", "tabular")
        assert backbone_presets(name)
    assert {"tiny", "small", "base"} <= set(backbone_presets("unet"))
    assert {"S/2", "S/4", "B/2"} <= set(backbone_presets("dit"))
    assert {"small", "base", "large"} <= set(backbone_presets("mlp"))


def test_explicit_params_override_preset():
    net = build_backbone("unet", preset="small", in_channels=1, model_channels=16)
    assert net.input_layer.out_channels == 16
    n = sum(p.numel() for p in build_backbone("unet", preset="tiny", in_channels=1).parameters())
    assert 300_000 <= n <= 600_000


@pytest.mark.parametrize("name, required", [("unet", {"in_channels": 1}), ("dit", {"in_channels": 1}),
                                            ("mlp", {"in_features": 2})])
def test_unknown_param_raises(name, required):
    with pytest.raises(ValueError, match="bogus_width"):
        build_backbone(name, preset=next(iter(backbone_presets(name))), bogus_width=3, **required)


def test_small_unet_keeps_its_width_at_low_resolution():
    """The 28x28 preset: ~1.15M parameters, 16 / 48 / 80 channels at 28 / 14 / 7 (bench/throughput.py)."""
    net = build_backbone("unet", preset="small", in_channels=1)
    assert 1_100_000 <= sum(p.numel() for p in net.parameters()) <= 1_200_000
    assert net.input_layer.out_channels == 16


@pytest.mark.parametrize("mult", ["1,2,3", [1, 0], [1, 2.5]])
def test_unet_channel_mult_must_be_positive_integers(mult):
    with pytest.raises(ConfigError, match="backbone 'unet': channel_mult must be a list of positive integers"):
        build_backbone("unet", preset="small", in_channels=1, channel_mult=mult)


def test_factory_errors():
    with pytest.raises(ValueError, match="preset 'huge'"):
        build_backbone("unet", preset="huge", in_channels=1)
    with pytest.raises(ValueError, match="in_features"):
        build_backbone("mlp", preset="small")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet9000")


def test_input_errors():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        build_backbone("dit", preset="tiny/2", in_channels=1, image_size=9)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        build_backbone("dit", in_channels=1, image_size=(8, 12), patch_size=8)
    unet = build_backbone("unet", preset="small", in_channels=1)
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(torch.zeros(1, 1, 30, 30), torch.zeros(1))
    mlp = build_backbone("mlp", preset="small", in_features=3)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        mlp(torch.zeros(2, 3, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="noise_cond"):
        mlp(torch.zeros(2, 3), torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def test_attention_levels_and_groups():
    assert _attention_levels(28, 3, (7,)) == {2}
    assert _attention_levels(32, 3, (7,)) == {2}  # nearest level in log scale
    assert _attention_levels(8, 2, (4,)) == {1}
    assert _attention_levels(32, 4, (16, 8)) == {1, 2}
    assert [num_groups(c) for c in (1, 3, 16, 32, 48, 128, 256)] == [1, 1, 4, 8, 12, 32, 32]


def test_noise_embedding_resolves_c_noise_range():
    emb = NoiseEmbedding(64)
    c = torch.linspace(-2.5, 1.5, 401)
    f = emb(c)
    assert f.shape == (401, 64)
    # Lowest frequency: a monotone read-out over the whole range (no wrap-around).
    assert bool((f[1:, -1] > f[:-1, -1]).all())
    # Neighbouring levels 0.01 apart in c_noise (4 % in sigma) are clearly separated.
    assert float((f[1:] - f[:-1]).norm(dim=1).min()) > 0.5
    assert "freqs" not in emb.state_dict()
    assert math.isclose(float(emb.freqs.max()), 100.0, rel_tol=1e-5)


def test_dit_pos_embed_is_fixed_buffer():
    net = build_backbone("dit", preset="tiny/2", in_channels=1)
    assert "pos_embed" not in dict(net.named_parameters())
    assert "pos_embed" not in net.state_dict()
    assert net.pos_embed.shape == (1, 16, 128)

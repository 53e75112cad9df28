"""Training: the loss falls, samples match the true density, resume is exact, checkpoints are safe."""

import json
import warnings

import pytest
import torch

import difflab
from difflab.checkpoint import find_checkpoint, list_checkpoints, verify_checkpoint
from difflab.config import config_from_dict
from difflab.data import Dataset, Normalizer, load_data, synthetic
from difflab.errors import CheckpointError, DifflabError
from difflab.runlock import RunLock
from difflab.training import DataOrder, learning_rate, train


def _mlp_cfg(steps, **train_kw):
    return config_from_dict({
        "model": {"backbone": "mlp", "preset": "small", "params": {"dropout": 0.1}},
        "train": {"steps": steps, "batch_size": 64, "lr": 3e-3, "warmup": 10, "checkpoint_every": 10,
                  "log_every": 1, "device": "cpu", **train_kw},
    })


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gmm"
    data = load_data("gmm2d", n=4000)
    cfg = config_from_dict({
        "model": {"backbone": "mlp", "preset": "base"},
        "train": {"steps": 600, "batch_size": 256, "lr": 2e-3, "warmup": 50, "checkpoint_every": 300,
                  "log_every": 10, "device": "cpu"},
    })
    train(cfg, data, out, progress=False)
    return out


def test_loss_falls_and_samples_match_the_true_density(mixture_run):
    rows = (mixture_run / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5
    mix = synthetic("gmm2d")
    model = difflab.load(mixture_run)
    samples = model.sample(2000, seed=0)
    true = mix.sample(2000, 1)
    gap = float(mix.log_prob(true).mean() - mix.log_prob(samples).mean())
    # a short CPU run: within 0.5 nats of true samples (the full default run is held to 0.15 in bench/)
    assert gap < 0.5, gap
    assert (mixture_run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # 2-D data: a scatter plot


def test_denoiser_contract(mixture_run):
    model = difflab.load(mixture_run)
    x0 = model.normalize(synthetic("gmm2d").sample(8, 0))
    x = x0 + 0.3 * torch.randn_like(x0)
    d_scalar = model.denoiser(x, 0.3)
    d_vector = model.denoiser(x, torch.full((8,), 0.3))
    assert d_scalar.shape == x.shape
    torch.testing.assert_close(d_scalar, d_vector)
    torch.testing.assert_close(model.denormalize(model.normalize(x0)), x0)
    assert 0 < model.sigma_min < model.sigma_max
    # at small sigma the denoiser is close to the identity, at large sigma close to the data mean
    torch.testing.assert_close(model.denoiser(x0, 1e-3), x0, atol=2e-2, rtol=0)
    far = model.denoiser(torch.zeros(8, 2), 80.0)
    torch.testing.assert_close(far.mean(0), model.normalize(synthetic("gmm2d").mean.float()[None])[0], atol=0.15, rtol=0)


def _all_tensors(run_dir):
    ckpt = find_checkpoint(run_dir)
    from difflab.checkpoint import load_tensors

    return {**load_tensors(ckpt, "model"), **{f"ema.{k}": v for k, v in load_tensors(ckpt, "ema").items()}}


def test_resume_is_bitwise_exact(tmp_path):
    data = load_data("gmm2d", n=500)
    train(_mlp_cfg(40), data, tmp_path / "full", progress=False)
    interrupted = train(_mlp_cfg(40), data, tmp_path / "cut", progress=False, stop_after=25)
    assert interrupted.step == 25
    assert json.loads((find_checkpoint(tmp_path / "cut") / "trainer.json").read_text())["step"] == 20
    train(_mlp_cfg(40), data, tmp_path / "cut", resume=True, progress=False)
    a, b = _all_tensors(tmp_path / "full"), _all_tensors(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 41))


def test_callback_sees_every_step_and_can_stop_the_run_with_a_checkpoint(tmp_path):
    seen = []

    def cb(p):
        seen.append((p.step, p.loss, p.elapsed_s))
        assert isinstance(p.ema, torch.nn.Module) and p.lr > 0
        return p.step == 13

    result = train(_mlp_cfg(40), load_data("gmm2d", n=500), tmp_path / "run", progress=False, callback=cb)
    assert result.step == 13 and [s for s, _, _ in seen] == list(range(1, 14))
    assert all(e2 >= e1 for (_, _, e1), (_, _, e2) in zip(seen, seen[1:]))
    assert find_checkpoint(tmp_path / "run").name == "step-00000013"


def test_image_run_resumes_and_writes_a_grid(tmp_path):
    data = load_data("digits", n=64)
    cfg = config_from_dict({"model": {"params": {"model_channels": 16}}, "sample": {"steps": 2},
                            "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "sample_grid": 4}})
    train(cfg, data, tmp_path / "a", progress=False, stop_after=3)
    train(cfg, data, tmp_path / "a", resume=True, progress=False)
    train(cfg, data, tmp_path / "b", progress=False)
    a, b = _all_tensors(tmp_path / "a"), _all_tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_pins_its_preset_so_a_later_preset_change_does_not_break_it(tmp_path, monkeypatch):
    from difflab.backbones import unet

    data = load_data("digits", n=32)
    cfg = config_from_dict({"model": {"params": {"model_channels": 16}}, "sample": {"steps": 2},
                            "train": {"steps": 1, "batch_size": 16, "sample_grid": 0}})
    train(cfg, data, tmp_path / "r", progress=False)
    model_cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["model"]
    assert (model_cfg["backbone"], model_cfg["preset"]) == ("unet", "tiny")
    assert model_cfg["params"] == {**unet.UNET_PRESETS["tiny"], "channel_mult": [1, 2], "attention_resolutions": [4],
                                   "model_channels": 16}  # the user's value wins over the preset's 24
    before = difflab.load(tmp_path / "r").sample(2, steps=2, seed=0)
    changed = {**unet.UNET_PRESETS, "tiny": {**unet.UNET_PRESETS["tiny"], "channel_mult": (1, 3), "head_channels": 8}}
    monkeypatch.setattr(unet, "UNET_PRESETS", changed)
    monkeypatch.setitem(unet.BACKBONES.meta("unet"), "presets", changed)
    assert torch.equal(difflab.load(tmp_path / "r").sample(2, steps=2, seed=0), before)

    # A run saved before pinning (preset "auto", no params) is rebuilt from today's preset: a mismatch says so.
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    saved["config"]["model"].update(backbone="auto", preset="auto", params={})
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="older difflab whose preset 'tiny' had another layout"):
        difflab.load(tmp_path / "r")


def test_damaged_newest_checkpoint_falls_back(tmp_path):
    train(_mlp_cfg(30, keep_checkpoints=5), load_data("gmm2d", n=200), tmp_path, progress=False)
    ckpts = list_checkpoints(tmp_path)
    assert [c.name for c in ckpts] == ["step-00000010", "step-00000020", "step-00000030"]
    weights = ckpts[-1] / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncate
    with pytest.raises(CheckpointError, match="ema.safetensors: checksum mismatch"):
        verify_checkpoint(ckpts[-1])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert find_checkpoint(tmp_path) == ckpts[-2]
    assert any("step-00000030" in str(x.message) for x in w)
    difflab.load(tmp_path)  # loads the previous good one


def test_keep_last_k_and_no_half_written_checkpoint(tmp_path):
    train(_mlp_cfg(50, keep_checkpoints=2), load_data("gmm2d", n=200), tmp_path, progress=False)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-00000040", "step-00000050"]
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "step-00000050"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    data = load_data("gmm2d", n=200)
    train(_mlp_cfg(10), data, tmp_path / "r", progress=False)
    with pytest.raises(DifflabError, match="already holds a run"):
        train(_mlp_cfg(10), data, tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError):
        train(_mlp_cfg(10), data, tmp_path / "empty", resume=True, progress=False)


def test_run_lock(tmp_path):
    with RunLock(tmp_path):
        (tmp_path / ".lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 1}))
        with pytest.raises(DifflabError, match="another difflab process"):
            RunLock(tmp_path).acquire()
    # a lock left by a dead process is stale and taken over
    (tmp_path / ".lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 2**22 + 7}))
    with RunLock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()


def test_data_order_is_a_permutation_per_epoch():
    order = DataOrder(10, seed=3)
    stream = torch.cat([order.batch(p, 4) for p in range(0, 40, 4)])
    for epoch in range(4):
        assert sorted(stream[10 * epoch : 10 * epoch + 10].tolist()) == list(range(10))
    assert torch.equal(DataOrder(10, seed=3).batch(12, 7), stream[12:19])


def test_learning_rate_schedule():
    cfg = _mlp_cfg(100, warmup=10, lr=1.0, lr_min_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize(
    "process, prediction, sigma_dist, weighting",
    [("ddpm", "eps", "process", "min_snr"), ("vp", "v", "process", "likelihood"),
     ("ve", "x0", "log_uniform", "uniform"), ("edm", "edm", "lognormal", "edm")],
)
def test_every_process_and_target_trains_and_samples_with_every_grid(tmp_path, process, prediction, sigma_dist,
                                                                      weighting):
    cfg = config_from_dict({
        "process": {"name": process}, "loss": {"sigma_dist": sigma_dist, "weighting": weighting},
        "model": {"backbone": "mlp", "preset": "small", "prediction": prediction},
        "train": {"steps": 30, "batch_size": 64, "checkpoint_every": 30, "lr": 1e-3},
    })
    result = train(cfg, load_data("gmm2d", n=500), tmp_path, progress=False)
    assert torch.isfinite(torch.tensor(result.last_loss))
    model = difflab.load(tmp_path)
    grids = ["karras", "log_snr", "uniform_t"] + (["native"] if process == "ddpm" else [])
    for grid in grids:
        for sampler in ("euler", "ddpm"):
            x = model.sample(16, sampler=sampler, steps=6, schedule=grid)
            assert x.shape == (16, 2) and torch.isfinite(x).all(), (grid, sampler)


def test_dit_backbone_trains_on_images(tmp_path):
    cfg = config_from_dict({"model": {"backbone": "dit", "preset": "tiny/2", "class_conditional": True},
                            "train": {"steps": 3, "batch_size": 8, "checkpoint_every": 3, "sample_grid": 0}})
    train(cfg, load_data("digits", n=32), tmp_path, progress=False)
    model = difflab.load(tmp_path)
    x = model.sample(4, steps=2, guidance=3.0)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    data = load_data("gmm2d", n=300)
    cfg = config_from_dict({"model": {"backbone": "mlp", "preset": "small"},
                            "train": {"steps": 15, "batch_size": 64, "checkpoint_every": 15, "sample_grid": 0}})
    train(cfg, data, tmp_path / "one", progress=False)
    train(cfg.replace("train", grad_accum=4), data, tmp_path / "four", progress=False)
    a, b = _all_tensors(tmp_path / "one"), _all_tensors(tmp_path / "four")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
    with pytest.raises(DifflabError, match="grad_accum"):
        train(cfg.replace("train", grad_accum=5), data, tmp_path / "bad", progress=False)


def test_bf16_autocast_trains(tmp_path):
    cfg = config_from_dict({"model": {"params": {"model_channels": 16}},
                            "train": {"steps": 30, "batch_size": 32, "precision": "bf16", "checkpoint_every": 30,
                                      "sample_grid": 0, "log_every": 1}})
    train(cfg, load_data("digits", n=256), tmp_path, progress=False)
    losses = [float(r.split(",")[1]) for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert all(map(torch.isfinite, torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])
    model = difflab.load(tmp_path)
    assert next(model.denoiser.parameters()).dtype == torch.float32  # weights stay fp32


def test_accumulated_gradients_equal_full_batch_gradients():
    import contextlib

    from difflab.backbones import build_backbone
    from difflab.denoiser import Denoiser
    from difflab.losses import DenoisingLoss, LogNormal
    from difflab.training import accumulate_gradients

    torch.manual_seed(0)
    model = Denoiser(build_backbone("mlp", preset="small", in_features=3), sigma_data=1.0)
    for p in model.parameters():  # leave the zero-initialised output layer: perturb everything
        p.data.add_(0.05 * torch.randn_like(p))
    loss_fn = DenoisingLoss(LogNormal(), "edm", sigma_data=1.0)
    x0 = torch.randn(24, 3)
    grads, values = [], []
    for parts in (1, 3, 8):
        model.zero_grad()
        sigma, noise = loss_fn.draw(tuple(x0.shape), torch.Generator().manual_seed(5))
        values.append(accumulate_gradients(model, loss_fn, x0, None, sigma, noise, parts, contextlib.nullcontext()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    full = loss_fn(model, x0, generator=torch.Generator().manual_seed(5)).mean()
    assert values[0] == pytest.approx(float(full.detach()), rel=1e-6)
    for g, v in zip(grads[1:], values[1:]):
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-7)
        assert v == pytest.approx(values[0], rel=1e-5)


def test_fp16_needs_cuda_and_precision_is_validated(tmp_path):
    from difflab.errors import ConfigError

    cfg = config_from_dict({"model": {"backbone": "mlp", "preset": "small"},
                            "train": {"steps": 2, "precision": "fp16", "device": "cpu"}})
    with pytest.raises(ConfigError, match="train.precision"):
        train(cfg, load_data("gmm2d", n=100), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="train.precision"):
        config_from_dict({"train": {"precision": "fp8"}})


def test_channels_last_gives_the_same_training_as_contiguous(tmp_path):
    """channels-last only changes the memory layout: the same run ends with the same weights up to float
    summation order (the convolution kernels differ)."""
    base = {"model": {"params": {"model_channels": 8}},
            "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 4, "sample_grid": 0}}
    data = load_data("digits", n=64)
    for mode in ("off", "on"):
        cfg = config_from_dict({**base, "train": {**base["train"], "channels_last": mode}})
        train(cfg, data, tmp_path / mode, progress=False)
    a, b = _all_tensors(tmp_path / "off"), _all_tensors(tmp_path / "on")
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_channels_last_auto_rules():
    from types import SimpleNamespace

    from difflab.training import use_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto, on, off = (SimpleNamespace(channels_last=m, precision="fp32") for m in ("auto", "on", "off"))
    auto_bf16 = SimpleNamespace(channels_last="auto", precision="bf16")
    assert use_channels_last(auto, cpu, "image", "unet") and use_channels_last(auto, cuda, "image", "dit")
    assert not use_channels_last(auto_bf16, cpu, "image", "unet") and use_channels_last(auto_bf16, cuda, "image", "unet")
    assert not use_channels_last(auto, cpu, "image", "dit")  # not measured on the CPU: left off
    assert not use_channels_last(auto, cpu, "tabular", "mlp") and not use_channels_last(on, cpu, "tabular", "mlp")
    assert use_channels_last(on, cpu, "image", "dit") and not use_channels_last(off, cuda, "image", "unet")


def test_batch_source_indexes_and_converts_layout():
    from difflab.training import BatchSource

    x = torch.randn(10, 2, 4, 4)
    idx = torch.tensor([3, 1, 7])
    src = BatchSource(x, torch.arange(10), torch.device("cpu"), channels_last=True)
    out = src.get(idx)
    assert torch.equal(out, x[idx]) and out.is_contiguous(memory_format=torch.channels_last)
    assert src.resident and torch.equal(src.labels[idx], idx)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """train.compile=True (torch.compile, inductor on the CPU) trains to the same weights as eager mode up to
    float order. Slow (about a minute of compilation): run with ``pytest -m slow``."""
    base = {"model": {"backbone": "mlp", "preset": "small"},
            "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 4, "sample_grid": 0}}
    data = load_data("gmm2d", n=200)
    for flag in (False, True):
        cfg = config_from_dict({**base, "train": {**base["train"], "compile": flag}})
        train(cfg, data, tmp_path / str(flag), progress=False)
    a, b = _all_tensors(tmp_path / "False"), _all_tensors(tmp_path / "True")
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resuming_a_class_conditional_run_on_unlabelled_data_is_refused(tmp_path):
    from difflab.errors import ConfigError

    cfg = config_from_dict({"model": {"backbone": "mlp", "preset": "small", "class_conditional": True},
                            "train": {"steps": 2, "batch_size": 16, "checkpoint_every": 2, "sample_grid": 0}})
    train(cfg, load_data("gmm2d", n=64), tmp_path, progress=False)
    unlabelled = load_data("gmm2d", n=64, label_column="")
    assert unlabelled.labels is None
    with pytest.raises(ConfigError, match="class_conditional"):
        train(cfg.replace("train", steps=4), unlabelled, tmp_path, resume=True, progress=False)


def test_dequantization_width_finds_integer_columns_and_images():
    from difflab.training import dequantization_width

    table = torch.tensor([[1.0, 0.5, 3.0], [2.0, 1.5, -4.0], [7.0, 2.0, 0.0]])
    width = dequantization_width(table, Normalizer("tabular", [0.0, 0.0, 1.0], [2.0, 1.0, 4.0]))
    torch.testing.assert_close(width, torch.tensor([0.5, 0.0, 0.25]))  # 1 / scale where integer, else 0
    assert dequantization_width(table[:, 1:2] + 0.25, Normalizer.identity(1)) is None
    images = torch.tensor([[[[0.0, 16.0], [3.0, 9.0]]]])
    assert float(dequantization_width(images, Normalizer.for_range(0, 16))) == pytest.approx(1 / 8)
    assert dequantization_width(images / 3, Normalizer.for_range(0, 16)) is None


def test_dequantized_training_sees_jittered_rows_and_resumes_exactly(tmp_path, monkeypatch):
    """train.dequantize="integers": every batch is x + u, u ~ U(-1/2, 1/2) (data units) in the integer columns
    only, drawn from the run's checkpointed generator, so an interrupted run resumes bit for bit."""
    from difflab import training

    rows = torch.randint(0, 5, (300, 2), generator=torch.Generator().manual_seed(0)).float()
    data = Dataset(x=torch.cat([rows, torch.randn(300, 1)], 1), labels=None, kind="tabular", name="ints")
    seen = []
    real = training.accumulate_gradients

    def spy(net, loss_fn, x, *args, **kw):
        seen.append(x.detach().clone())
        return real(net, loss_fn, x, *args, **kw)

    monkeypatch.setattr(training, "accumulate_gradients", spy)
    train(_mlp_cfg(20, dequantize="integers"), data, tmp_path / "full", progress=False)
    back = difflab.load(tmp_path / "full").normalizer.inverse(torch.cat(seen))  # data units
    offsets = back - back.round()
    assert float(offsets[:, :2].abs().max()) <= 0.5 + 1e-5 and float(offsets[:, :2].std()) > 0.25  # U(-.5, .5): 0.29
    nearest = (back[:, 2:] - data.x[:, 2].reshape(1, -1)).abs().min(1).values
    assert float(nearest.max()) < 1e-4  # the float column as given (up to the normaliser's round trip)
    seen.clear()
    train(_mlp_cfg(20, dequantize="integers"), data, tmp_path / "cut", progress=False, stop_after=15)
    train(_mlp_cfg(20, dequantize="integers"), data, tmp_path / "cut", resume=True, progress=False)
    a, b = _all_tensors(tmp_path / "full"), _all_tensors(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)

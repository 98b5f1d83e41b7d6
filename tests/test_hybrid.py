"""The hybrid EGC backbone (nets/hybrid.py) keeps EGC's contract: its eps is the input gradient of its
energy (a finite difference), its classifier logits are the pooled class channels of its map (with the
global head inside them), it trains, resumes bit for bit, reloads, samples and classifies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from egc import EGC
from egc.checkpoint import load_checkpoint
from egc.config import load_config
from egc.diffusion import energy as en
from egc.diffusion.schedule import Schedule
from egc.errors import ConfigError
from egc.nets import build_net
from egc.nets.hybrid import HybridEnergyNet
from egc.train.loop import train
from tests.test_energy import _Float64Abar

HYB = ["model.backbone=hybrid", "model.size=tiny", "model.image_size=8", "model.num_classes=3"]


def _hybrid(norm: str, prior: str = "denoiser", conditioning: str = "joint"):
    cfg = load_config(None, [*HYB, f"model.norm={norm}", f"model.energy_prior={prior}", f"model.conditioning={conditioning}"])
    torch.manual_seed(0)
    net = build_net(cfg.model).double()
    assert isinstance(net, HybridEnergyNet)
    torch.nn.init.normal_(net.out.weight, std=0.3)  # zero-initialised: make the map non-trivial
    torch.nn.init.normal_(net.head.weight, std=0.3)
    for m in net.modules():  # the FiLM layers start at zero too: let time matter
        if isinstance(m, torch.nn.Linear) and m.out_features != cfg.model.num_classes:
            torch.nn.init.normal_(m.weight, std=0.1)
    return net.eval(), cfg  # eval: BatchNorm reads its running statistics, so each sample's energy is its own


@pytest.mark.parametrize("norm,prior", [("group", "denoiser"), ("batch", "gaussian"), ("none", "none")])
def test_hybrid_eps_is_the_finite_difference_of_its_energy(norm: str, prior: str) -> None:
    net, cfg = _hybrid(norm, prior)
    em = _Float64Abar(net, cfg.model, Schedule.make("ldm-linear"))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([10, 700])
    eps, _, _ = em.eps_and_logits(x, t)
    assert eps.abs().sum() > 0
    h = 1e-6
    for idx in [(0, 0, 1, 2), (1, 0, 5, 7), (1, 0, 3, 3), (0, 0, 7, 0)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        fd = (em.energy(xp, t)[idx[0]] - em.energy(xm, t)[idx[0]]) / (2 * h)
        assert torch.allclose(eps[idx], fd, rtol=1e-5, atol=1e-7), (norm, idx, float(eps[idx]), float(fd))


def test_hybrid_logits_are_the_pooled_class_channels_and_carry_the_global_head() -> None:
    net, cfg = _hybrid("group")
    em = en.EnergyModel(net, cfg.model, Schedule.make("ldm-linear"))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([5, 300, en.CLEAN_T])
    fmap = net(x, t)
    k = cfg.model.num_classes
    assert fmap.shape == (3, k + 1, 8, 8)  # K class channels + C denoiser channels, at full resolution
    by_hand = fmap[:, :k].mean(dim=(2, 3)) * cfg.model.logit_scale
    assert torch.allclose(em.logits(x, t), by_hand)
    # the global head: zeroing the decoder's output leaves exactly the head's logits, the same at every pixel
    torch.nn.init.zeros_(net.out.weight)
    torch.nn.init.zeros_(net.out.bias)
    f0 = net(x, t)[:, :k]
    assert f0.abs().sum() > 0 and torch.allclose(f0, f0[:, :, :1, :1].expand_as(f0))


def test_hybrid_starts_flat_and_time_and_clean_token_matter() -> None:
    cfg = load_config(None, [*HYB, "model.norm=group"])
    net = build_net(cfg.model)
    x = torch.randn(2, 1, 8, 8)
    assert net(x, torch.tensor([3, 900])).abs().max() == 0  # zero-initialised output and head: a flat energy
    net, _ = _hybrid("group")
    xd = x.double()
    a, b, c = (net(xd, torch.tensor([t, t])) for t in (3, 900, en.CLEAN_T))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_hybrid_config_refusals_are_one_line() -> None:
    for bad, msg in ((["model.backbone=resnet"], "model.backbone 'resnet' unknown"),
                     (["model.norm=batch"], "model.norm must be one of group, none with model.backbone unet"),
                     (["model.backbone=hybrid", "model.kind=cnn"], "model.backbone hybrid is for the UNet kinds")):
        with pytest.raises(ConfigError, match=msg) as e:
            load_config(None, bad)
        assert "\n" not in str(e.value)
    c = load_config(None, ["model.backbone=hybrid"]).model  # no size given: the hybrid's own small size
    assert (c.channels, c.channel_mult, c.norm, c.pool, c.patch) == (64, (1, 4, 4), "group", "mean", 2)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_hybrid_trains_resumes_bit_for_bit_reloads_samples_and_classifies(norm: str, tmp_path: Path, tiny_overrides) -> None:
    over = [*tiny_overrides, "model.backbone=hybrid", f"model.norm={norm}", "loss.clean_shift=1", "train.steps=6"]
    full = train(load_config(None, over), tmp_path / "full", quiet=True)
    train(load_config(None, over), tmp_path / "part", quiet=True, stop_at_step=3)
    train(load_config(None, over), tmp_path / "part", resume=True, quiet=True)
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(tmp_path / "part")
    assert a.step == b.step == 6 and a.config.model.backbone == "hybrid"
    for group in ("model", "ema"):
        for k, v in a.group(group).items():
            assert torch.equal(v, b.group(group)[k]), (group, k)
    m = EGC.load(str(tmp_path / "full"))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    p = m.predict_proba(x)
    assert p.shape == (4, 3) and torch.allclose(p.sum(1), torch.ones(4), atol=1e-5)
    imgs, labels = m.sample(3, steps=2, class_balanced=True)
    assert imgs.shape == (3, 1, 8, 8) and torch.isfinite(imgs).all() and labels.tolist() == [0, 1, 2]

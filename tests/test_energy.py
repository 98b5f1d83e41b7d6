"""Energy, score and classifier head: properties that can fail."""

from __future__ import annotations

import torch

from egc.config import load_config
from egc.diffusion import energy as en
from egc.diffusion.losses import egc_loss
from egc.diffusion.schedule import Schedule
from egc.nets import build_net


def _net(prior: str = "gaussian"):
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", f"model.energy_prior={prior}"])
    torch.manual_seed(0)
    net = build_net(cfg.model).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)  # non-zero output so the energy is not flat
    return net, cfg


def test_eps_is_finite_difference_gradient_of_energy():
    for prior in ("gaussian", "none", "denoiser"):
        net, cfg = _net(prior)
        sched = Schedule.make("ldm-linear")
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        t = torch.tensor([10, 700])
        abar = sched.abar(t).double()
        eps, _, e0 = en.eps_and_logits(net, cfg.model, x, t, abar)
        h = 1e-6
        for idx in [(0, 0, 1, 2), (1, 0, 5, 7), (1, 0, 3, 3)]:
            xp, xm = x.clone(), x.clone()
            xp[idx] += h
            xm[idx] -= h
            ep = en.energy_and_logits(net, cfg.model, xp, t, abar)[0][idx[0]]
            em = en.energy_and_logits(net, cfg.model, xm, t, abar)[0][idx[0]]
            fd = (ep - em) / (2 * h)
            assert torch.allclose(eps[idx], fd, rtol=1e-5, atol=1e-7), (prior, idx, float(eps[idx]), float(fd))


def test_zero_init_gives_flat_network_energy_and_prior_only_eps():
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3"])
    net = build_net(cfg.model)
    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([999, 999])
    abar = sched.abar(t)
    eps, logits, _ = en.eps_and_logits(net, cfg.model, x, t, abar)
    assert torch.allclose(logits, torch.zeros_like(logits))
    # At init only the Gaussian prior acts: eps = c_t x.
    c = en.prior_coef(abar, cfg.model.sigma_data).view(-1, 1, 1, 1)
    assert torch.allclose(eps, c * x, atol=1e-6)


def test_guided_eps_adds_classifier_gradient():
    net, cfg = _net()
    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([100, 500])
    abar = sched.abar(t).double()
    y = torch.tensor([0, 2])
    base = en.guided_eps(net, cfg.model, x, t, abar, None, 0.0)
    guided = en.guided_eps(net, cfg.model, x, t, abar, y, 2.0)
    _, g = en.input_grad(lambda z: torch.log_softmax(en.energy_and_logits(net, cfg.model, z, t, abar)[1], 1).gather(1, y[:, None])[:, 0], x)
    expect = base - 2.0 * (1 - abar).sqrt().view(-1, 1, 1, 1) * g
    assert torch.allclose(guided, expect, atol=1e-10)


def test_pool_attention_of_constant_map_is_that_constant():
    f = torch.randn(2, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(en.pool_logits(f, "attention"), f[:, :, 0, 0], atol=1e-6)
    assert torch.allclose(en.pool_logits(f, "mean"), f[:, :, 0, 0], atol=1e-6)


def test_loss_decreases_on_a_tiny_batch():
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "loss.noisy_ce_weight=0.1"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    sched = Schedule.make("ldm-linear")
    y = torch.arange(16) % 3
    x0 = torch.full((16, 1, 8, 8), -0.8) + 0.1 * torch.randn(16, 1, 8, 8)
    for i, k in enumerate(y.tolist()):  # class k = a bright quadrant: a learnable signal
        r, c = divmod(k, 2)
        x0[i, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 0.8
    opt = torch.optim.Adam(net.parameters(), 3e-3)

    def eval_loss() -> float:
        g = torch.Generator().manual_seed(123)  # same t and noise every time: a fixed objective
        return float(egc_loss(net, cfg.model, cfg.loss, sched, x0, y, g).total.detach())

    before = eval_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        parts = egc_loss(net, cfg.model, cfg.loss, sched, x0, y, gen)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_schedules_are_monotone_and_valid():
    for name in ("ldm-linear", "ddpm-linear", "cosine"):
        ac = Schedule.make(name).alphas_cumprod
        assert ac.shape == (1000,)
        assert (ac[1:] < ac[:-1]).all() and 0 < float(ac[-1]) < float(ac[0]) < 1


def test_denoiser_prior_at_zero_output_equals_gaussian_prior():
    sched = Schedule.make("ldm-linear")
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    abar = sched.abar(torch.tensor([0, 300, 999])).double()
    _, g = en.input_grad(lambda z: en.denoiser_term(z, torch.zeros_like(z), abar, 0.5), x)
    c = en.prior_coef(abar, 0.5).view(-1, 1, 1, 1)
    assert torch.allclose(g, c * x, rtol=1e-9, atol=1e-12)


def test_denoiser_prior_gradient_is_eps_of_its_x0_estimate_when_r_is_constant():
    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    r = torch.randn(2, 1, 8, 8, dtype=torch.float64)  # held fixed: no Jacobian term
    abar = sched.abar(torch.tensor([50, 600])).double()
    _, g = en.input_grad(lambda z: en.denoiser_term(z, r, abar, 0.5), x)
    a = abar.view(-1, 1, 1, 1)
    d = 1 - a + a * 0.25
    x0 = a.sqrt() * 0.25 / d * x + 0.5 * (1 - a).sqrt() / d.sqrt() * r
    assert torch.allclose(g, (x - a.sqrt() * x0) / (1 - a).sqrt(), rtol=1e-9, atol=1e-10)

"""Energy, score and classifier head: properties that can fail."""

from __future__ import annotations

import torch

from egc.config import load_config
from egc.diffusion import energy as en
from egc.diffusion.losses import egc_loss
from egc.diffusion.schedule import Schedule
from egc.nets import build_net


class _Float64Abar(en.EnergyModel):
    """The schedule's abar_t widened to float64 (``sched.abar(t).double()``), as the float64 networks of
    these tests compare against float64 formulas at rtol 1e-9 (the schedule itself gives float32)."""

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.sched.abar(t).double()


def _net(prior: str = "gaussian"):
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", f"model.energy_prior={prior}",
                             "model.conditioning=none", "model.logit_scale=1"])  # the hand-written logits below are unscaled
    torch.manual_seed(0)
    net = build_net(cfg.model).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)  # non-zero output so the energy is not flat
    return net, cfg


def test_eps_is_finite_difference_gradient_of_energy():
    for prior in ("gaussian", "none", "denoiser"):
        net, cfg = _net(prior)
        model = _Float64Abar(net, cfg.model, Schedule.make("ldm-linear"))
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        t = torch.tensor([10, 700])
        eps, _, e0 = model.eps_and_logits(x, t)
        h = 1e-6
        for idx in [(0, 0, 1, 2), (1, 0, 5, 7), (1, 0, 3, 3)]:
            xp, xm = x.clone(), x.clone()
            xp[idx] += h
            xm[idx] -= h
            ep = model.energy_and_logits(xp, t)[0][idx[0]]
            em = model.energy_and_logits(xm, t)[0][idx[0]]
            fd = (ep - em) / (2 * h)
            assert torch.allclose(eps[idx], fd, rtol=1e-5, atol=1e-7), (prior, idx, float(eps[idx]), float(fd))


def test_zero_init_gives_flat_network_energy_and_prior_only_eps():
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "model.energy_prior=gaussian",
                             "model.conditioning=none"])
    net = build_net(cfg.model)
    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([999, 999])
    abar = sched.abar(t)
    eps, logits, _ = en.EnergyModel(net, cfg.model, sched).eps_and_logits(x, t)
    assert torch.allclose(logits, torch.zeros_like(logits))
    # At init only the Gaussian prior acts: eps = c_t x, c_t = sqrt(1 - abar) / (abar sigma_data^2 + 1 - abar)
    # written out here (not en.prior_coef, which the code under test uses itself).
    a = abar.view(-1, 1, 1, 1)
    c = (1 - a).sqrt() / (a * cfg.model.sigma_data**2 + 1 - a)
    assert torch.allclose(eps, c * x, atol=1e-6)


def test_guided_eps_adds_classifier_gradient():
    net, cfg = _net()
    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([100, 500])
    abar = sched.abar(t).double()
    y = torch.tensor([0, 2])
    model = _Float64Abar(net, cfg.model, sched)
    base = model.guided_eps(x, t, None, 0.0)
    guided = model.guided_eps(x, t, y, 2.0)
    # The expected values from the network's raw output map F = net(x, t) [B, K, H, W], every formula
    # written out here (no egc.diffusion.energy code):
    #   E   = -sum_hw logsumexp_k F + 0.5 c_t |x|^2,  c_t = sqrt(1 - a) / (a sd^2 + 1 - a)
    #   l   = attention pool of F: token 0 of one softmax self-attention over [mean token, pixel tokens]
    #   eps = grad_x E;  guided = grad_x [E - s sqrt(1 - a) log_softmax(l)[y]]
    assert cfg.model.pool == "attention" and cfg.model.energy_prior == "gaussian" and cfg.model.conditioning == "none"
    a = abar.view(-1, 1, 1, 1)
    sd = cfg.model.sigma_data

    def by_hand(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = net(z, t)
        energy = -torch.logsumexp(f, dim=1).sum(dim=(1, 2)) + 0.5 * ((1 - a).sqrt() / (a * sd**2 + 1 - a) * z**2).sum(dim=(1, 2, 3))
        tok = f.flatten(2).transpose(1, 2)  # [B, HW, K]
        seq = torch.cat([tok.mean(1, keepdim=True), tok], 1)  # [B, 1 + HW, K]
        w = torch.softmax(seq[:, :1] @ seq.transpose(1, 2) / 3**0.5, dim=-1)  # K = 3
        logits = (w @ seq)[:, 0]
        return energy, torch.log_softmax(logits, 1)[torch.arange(2), y]

    xg = x.clone().requires_grad_(True)
    e, logp = by_hand(xg)
    (want_base,) = torch.autograd.grad(e.sum(), xg, retain_graph=True)
    (want_guided,) = torch.autograd.grad((e - 2.0 * (1 - abar).sqrt() * logp).sum(), xg)
    torch.testing.assert_close(base, want_base, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(guided, want_guided, rtol=1e-9, atol=1e-10)
    # and the guidance term is really there (it is not lost in the tolerance)
    assert float((guided - base).abs().max()) > 1e-3
    # One coordinate by central differences of the hand-written guided energy: the autograd above is
    # the gradient of what it claims to be.
    h, idx = 1e-6, (1, 0, 4, 6)
    xp, xm = x.clone(), x.clone()
    xp[idx] += h
    xm[idx] -= h
    with torch.no_grad():
        ep, lp = by_hand(xp)
        em, lm = by_hand(xm)
    fd = ((ep - 2.0 * (1 - abar).sqrt() * lp)[1] - (em - 2.0 * (1 - abar).sqrt() * lm)[1]) / (2 * h)
    assert abs(float(guided[idx]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


def test_pool_attention_of_constant_map_is_that_constant():
    f = torch.randn(2, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(en.pool_logits(f, "attention"), f[:, :, 0, 0], atol=1e-6)
    assert torch.allclose(en.pool_logits(f, "mean"), f[:, :, 0, 0], atol=1e-6)


def test_loss_decreases_on_a_tiny_batch():
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "loss.noisy_ce_weight=0.1"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    em = en.EnergyModel(net, cfg.model, Schedule.make("ldm-linear"))
    y = torch.arange(16) % 3
    x0 = torch.full((16, 1, 8, 8), -0.8) + 0.1 * torch.randn(16, 1, 8, 8)
    for i, k in enumerate(y.tolist()):  # class k = a bright quadrant: a learnable signal
        r, c = divmod(k, 2)
        x0[i, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 0.8
    opt = torch.optim.Adam(net.parameters(), 3e-3)

    def eval_loss() -> float:
        g = torch.Generator().manual_seed(123)  # same t and noise every time: a fixed objective
        return float(egc_loss(em, cfg.loss, x0, y, g).total.detach())

    before = eval_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        parts = egc_loss(em, cfg.loss, x0, y, gen)
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
    a = abar.view(-1, 1, 1, 1)
    c = (1 - a).sqrt() / (a * 0.25 + 1 - a)  # the Gaussian prior's c_t, written out (sigma_data 0.5)
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


def test_first_order_eps_is_the_denoiser_gradient_with_r_fixed_and_not_the_full_one():
    net, cfg = _net("denoiser")  # non-zero output weights: r and the logit map are not flat
    sched = Schedule.make("ldm-linear")
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([20, 400, en.CLEAN_T])
    abar = sched.abar(t).double()
    model = _Float64Abar(net, cfg.model, sched)
    eps1, logits = model.first_order_eps_and_logits(x, t)
    r = model.fmap(x, t)[:, cfg.model.num_classes:].detach()
    _, g = en.input_grad(lambda z: en.denoiser_term(z, r, abar, cfg.model.sigma_data), x)  # r held fixed
    assert torch.allclose(eps1[:2], g[:2], rtol=1e-9, atol=1e-10)
    assert eps1[2].abs().max() == 0  # a clean row has no noise to predict
    full, full_logits, _ = model.eps_and_logits(x, t)
    assert torch.allclose(logits, full_logits)  # same forward, same head
    assert (full[:2] - eps1[:2]).abs().max() > 1e-3  # the logit energy and r's Jacobian add to the full eps


def test_energy_step_share_mixes_first_order_and_energy_steps():
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "model.conditioning=none",
                             "loss.energy_step_share=0.25"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.1)
    sched = Schedule.make("ldm-linear")
    em = en.EnergyModel(net, cfg.model, sched)
    x0, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3
    gen = torch.Generator().manual_seed(5)
    kinds = ["mse" if egc_loss(em, cfg.loss, x0, y, gen).mse is not None else "first" for _ in range(80)]
    assert 8 <= kinds.count("mse") <= 32, kinds.count("mse")  # ~20 of 80 at p = 0.25
    # A first-order step's weight gradient is that of ||denoiser_eps - eps||^2 (+ the same CE terms):
    # rebuilt here by hand from the same draws.
    g1 = torch.Generator().manual_seed(5)
    while True:
        state = g1.get_state()
        parts = egc_loss(em, cfg.loss, x0, y, g1)
        if parts.mse_first_order is not None:
            break
    g2 = torch.Generator()
    g2.set_state(state)
    t = torch.randint(0, sched.num_steps, (8,), generator=g2)
    eps = torch.randn(x0.shape, generator=g2)
    abar = sched.abar(t)
    xt = sched.add_noise(x0, t, eps)
    fmap = net(xt, t)
    by_hand = (en.denoiser_eps(xt, fmap[:, 3:], abar, cfg.model.sigma_data) - eps).pow(2).mean()
    assert torch.allclose(parts.mse_first_order, by_hand.detach(), rtol=1e-5)


def test_energy_step_share_is_validated():
    import pytest

    from egc.errors import ConfigError

    with pytest.raises(ConfigError, match="energy_step_share must be in"):
        load_config(None, ["loss.energy_step_share=0"])
    with pytest.raises(ConfigError, match="needs model.energy_prior denoiser"):
        load_config(None, ["loss.energy_step_share=0.5", "model.energy_prior=gaussian"])
    load_config(None, ["loss.energy_step_share=0.5", "model.energy_prior=gaussian", "model.kind=ddpm"])  # unused there


def test_a_run_with_first_order_steps_trains_logs_both_and_samples(tmp_path):
    import csv

    from egc import EGC
    from egc.cli import main

    from .conftest import make_npz, tiny_train_argv

    npz = make_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(tiny_train_argv(run, npz, 12, "--set", "loss.energy_step_share=0.5")) == 0
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert any(r["mse"] for r in rows) and any(r["mse_first_order"] for r in rows)  # both kinds of step ran
    assert all(bool(r["mse"]) != bool(r["mse_first_order"]) for r in rows)  # each step is one kind
    m = EGC.load(run)
    assert m.config.loss.energy_step_share == 0.5  # recorded in the checkpoint's config
    assert torch.isfinite(m.sample(2, steps=2)[0]).all()  # sampling is the energy's gradient as always


def test_logit_scale_scales_the_classifier_not_the_energy():
    import dataclasses

    import pytest

    from egc.errors import ConfigError

    net, cfg = _net("denoiser")
    scaled = dataclasses.replace(cfg.model, logit_scale=4.0)
    sched = Schedule.make("ldm-linear")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([100, 500])
    abar = sched.abar(t).double()
    y = torch.tensor([1, 2])
    plain, four = _Float64Abar(net, cfg.model, sched), _Float64Abar(net, scaled, sched)
    e1, l1 = plain.energy_and_logits(x, t)
    e4, l4 = four.energy_and_logits(x, t)
    torch.testing.assert_close(e4, e1)  # the energy (and so the unguided eps) does not see the scale
    torch.testing.assert_close(l4, 4.0 * l1)
    assert float(l1.detach().abs().max()) > 1e-3  # not a zero map, where any scale would pass
    torch.testing.assert_close(four.logits(x, t), 4.0 * plain.logits(x, t))
    # classifier guidance follows the classifier: grad_x [E - s sqrt(1 - a) log_softmax(4 l)[y]]
    xg = x.clone().requires_grad_(True)
    e, lg = plain.energy_and_logits(xg, t)
    logp = torch.log_softmax(4.0 * lg, 1)[torch.arange(2), y]
    (want,) = torch.autograd.grad((e - 2.0 * (1 - abar).sqrt() * logp).sum(), xg)
    torch.testing.assert_close(four.guided_eps(x, t, y, 2.0), want, rtol=1e-9, atol=1e-10)
    with pytest.raises(ConfigError, match="logit_scale must be > 0"):
        load_config(None, ["model.logit_scale=-1"])

"""The model-kind registry's contract (every kind trains, loads, resumes, does what it says and refuses the
rest in one line), and issue 33's new kinds: JEM (loss, SGLD step, replay buffer) and the fast CNN."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from egc.checkpoint import latest_in
from egc.cli import main
from egc.config import load_config
from egc.diffusion.energy import EnergyModel
from egc.diffusion.losses import classifier_loss, jem_loss
from egc.diffusion.schedule import Schedule
from egc.errors import EgcError
from egc.kinds import KINDS
from egc.nets import build_net
from egc.sgld import sgld
from tests.conftest import make_npz, tiny_train_argv

USABLE = [k for k, v in KINDS.items() if not v.first_stage]
JEM_FAST = ["--set", "jem.buffer_size=16", "--set", "jem.sgld_steps=2"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return make_npz(tmp_path_factory.mktemp("kinds") / "t.npz")


@pytest.mark.parametrize("kind", USABLE)
def test_every_kind_trains_loads_resumes_and_refuses_what_it_cannot_do(kind: str, npz: Path, tmp_path: Path) -> None:
    from egc import EGC

    run = tmp_path / kind
    extra = ["--model", kind, *(JEM_FAST if kind == "jem" else [])]
    assert main(tiny_train_argv(run, npz, 2, *extra)) == 0
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--quiet"]) == 0
    m = EGC.load(str(run))
    info = KINDS[kind]
    assert (m.can_classify, m.can_generate, m.has_energy) == (info.classifies, info.generates, info.energy != "none")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    if info.classifies:
        p = m.predict_proba(x)
        assert p.shape == (3, 3) and torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
        assert torch.isfinite(m.energy(x)).all()
    else:
        with pytest.raises(EgcError, match=f"a {kind} checkpoint cannot classify") as e:
            m.predict_proba(x)
        assert "\n" not in str(e.value)
    if info.generates:
        imgs, _ = m.sample(2, steps=2, class_balanced=m.conditional)
        assert imgs.shape == (2, 1, 8, 8) and imgs.abs().max() <= 1
    else:
        with pytest.raises(EgcError, match=f"a {kind} checkpoint cannot generate") as e:
            m.sample(2, steps=2)
        assert "\n" not in str(e.value)
    if info.sampler != "diffusion":
        with pytest.raises(EgcError):
            m.eps(x, 10)


def test_sgld_step_and_jem_loss_by_hand() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4)

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ w.T

    x0 = torch.rand(2, 1, 2, 2) * 0.5
    gen = torch.Generator().manual_seed(7)
    out = sgld(logits_fn, x0, 1, step_size=0.3, noise=0.05, gen=gen)
    xg = x0.clone().requires_grad_(True)
    e = -torch.logsumexp(logits_fn(xg), 1).sum()
    (g,) = torch.autograd.grad(e, xg)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, (x0 - 0.3 * g + 0.05 * z).clamp(-1, 1), atol=1e-6)
    clipped = sgld(logits_fn, x0, 1, step_size=100.0, noise=0.0, clip=0.01)
    assert (clipped - x0).abs().max() <= 0.01 + 1e-7  # JEM++'s proximal step

    cfg = load_config(None, ["model.kind=jem", "model.size=tiny", "model.in_channels=1", "model.image_size=8", "model.num_classes=3"])
    net = build_net(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.5)  # a fresh net's zero output layer would make every energy 0
    xd, xf, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0])
    em = EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps))
    parts = jem_loss(em, cfg.loss, xd, y, xf, energy_weight=0.5)
    ld, lf = em.logits(xd), em.logits(xf)
    want = torch.nn.functional.cross_entropy(ld, y) + 0.5 * (-torch.logsumexp(ld, 1).mean() + torch.logsumexp(lf, 1).mean())
    assert parts.total.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.isnan(jem_loss(em, cfg.loss, xd, y, xf, diverge_at=1e-9).total)  # a diverged step is non-finite


def test_jem_trains_on_data_with_its_published_noise(monkeypatch) -> None:
    """JEM's released recipe adds N(0, 0.03^2) to the training images (on [-1, 1]) for both terms."""
    from egc.train import jem as jem_mod

    seen = {}
    monkeypatch.setattr(jem_mod, "jem_loss", lambda em, lcfg, x0, y, xs, *a: seen.setdefault("x0", x0))
    monkeypatch.setattr(jem_mod, "sgld", lambda fn, x, *a, **k: x)
    x0, y = torch.zeros(64, 1, 8, 8), torch.arange(64) % 3
    for noise in (0.0, 0.03):
        seen.clear()
        cfg = load_config(None, ["model.kind=jem", "model.size=tiny", "model.in_channels=1", "model.image_size=8",
                                 "model.num_classes=3", "jem.buffer_size=8", f"jem.data_noise={noise}"])
        loss = jem_mod.JEMLoss(cfg, x0, y, torch.Generator().manual_seed(0))
        loss(SimpleNamespace(logits=None), cfg.loss, x0, y, torch.Generator().manual_seed(1))
        assert float(seen["x0"].std()) == pytest.approx(noise, rel=0.05, abs=1e-9)
    assert load_config(None, ["model.kind=jem"]).jem.data_noise == 0.03


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(latest_in(run)), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(("model.", "jem."))}


def test_jem_replay_buffer_resumes_bit_for_bit(npz: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    # a constant learning rate: the cosine schedule follows the step budget, which differs between the two runs
    extra = ["--model", "jem", *JEM_FAST, "--set", "jem.init=data", "--set", "jem.sgld_clip=0.05", "--set", "train.lr_schedule=constant"]
    assert main(tiny_train_argv(a, npz, 4, *extra)) == 0
    assert main(tiny_train_argv(b, npz, 2, *extra)) == 0
    assert main(["train", "--out", str(b), "--resume", "--steps", "4", "--quiet"]) == 0
    ta, tb = _tensors(a), _tensors(b)
    assert "jem.buffer" in ta and set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_the_fast_cnn_and_noise_training(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.kind=cnn", "model.size=tiny", "model.in_channels=3", "model.image_size=32", "model.num_classes=10"])
    net = build_net(cfg.model)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = net(x)
    em = EnergyModel(net, cfg.model, Schedule.make("ldm-linear"))
    assert out.shape == (2, 10, 1, 1) and torch.allclose(em.logits(x), out[:, :, 0, 0], atol=1e-6)  # pooling one pixel returns it
    y = torch.tensor([1, 2])
    clean = classifier_loss(em, cfg.loss, x, y, torch.Generator().manual_seed(0)).total
    cfg.loss.noise_sigma = 0.5
    noisy = classifier_loss(em, cfg.loss, x, y, torch.Generator().manual_seed(0)).total
    assert not torch.allclose(clean, noisy)


def test_jem_refusals_are_one_line(npz: Path, tmp_path: Path, capsys) -> None:
    assert main(tiny_train_argv(tmp_path / "j", npz, 1, "--model", "jem", "--set", "model.conditioning=joint")) == 2
    err = capsys.readouterr().err
    assert "model.conditioning" in err and err.count("\n") == 1
    assert main(tiny_train_argv(tmp_path / "j2", npz, 1, "--model", "jem", "--set", "jem.init=gauss")) == 2
    assert "jem.init" in capsys.readouterr().err
    assert not (tmp_path / "j" / "checkpoints").exists() and not (tmp_path / "j2" / "checkpoints").exists()


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_class_builds_its_net_and_computes_only_what_it_has(kind: str) -> None:
    """The registry's classes: the network's output width is the kind's out_channels, the energy and eps of
    a kind that has them have the right shapes and are finite, the others refuse."""
    from egc.kinds import kind_of

    k = kind_of(kind)
    cfg = load_config(None, [f"model.kind={kind}", "model.size=tiny", "model.in_channels=1", "model.image_size=8", "model.num_classes=3"])
    net = build_net(cfg.model)
    assert type(net).__name__ == {"unet": "EnergyUNet", "cnn": "FastCNN", "autoencoder": "KLAutoencoder"}[k.net]
    if k.first_stage:
        return
    torch.manual_seed(0)
    for p in net.parameters():  # a fresh net's zero output layer would make every output 0
        torch.nn.init.normal_(p, std=0.2)
    x, t, y = torch.rand(2, 1, 8, 8) * 2 - 1, torch.tensor([10, 500]), torch.tensor([0, 2])
    em = EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps))
    out = net(x, t) if k.net == "unet" else net(x)
    assert out.shape[1] == k.out_channels(cfg.model)
    assert k.logits_t(t) is t if k.noisy_logits else k.logits_t(t) == -1
    if k.energy != "none":
        e = k.energy_of(em, x, t, y)
        assert e.shape == (2,) and torch.isfinite(e).all()
    else:
        with pytest.raises(NotImplementedError):
            k.energy_of(em, x, t, y)
    if k.sampler == "diffusion":
        eps = k.eps(em, x, t, None, 0.0, 0.0)
        assert eps.shape == x.shape and torch.isfinite(eps).all() and eps.abs().sum() > 0
    else:
        with pytest.raises(NotImplementedError):
            k.eps(em, x, t, None, 0.0, 0.0)


def test_jem_samples_continue_the_runs_replay_buffer(npz: Path, tmp_path: Path) -> None:
    """A training checkpoint carries the buffer and samples start there; without it (exported weights) from noise."""
    from egc.checkpoint import export_weights
    from egc.model import EGC

    run = tmp_path / "j"
    assert main(tiny_train_argv(run, npz, 2, "--model", "jem", *JEM_FAST, "--set", "jem.init=data")) == 0
    m = EGC.load(run)
    buf = _tensors(run)["jem.buffer"]
    assert m.sgld_buffer is not None and torch.equal(m.sgld_buffer, buf.float())
    # no gradient step and no noise: every sample is a buffer entry, unchanged
    m.config.jem.sgld_step_size, m.config.jem.sgld_noise = 0.0, 0.0
    x, _ = m.sample(5, steps=1, seed=3)
    assert all(any(torch.equal(xi, bj) for bj in buf) for xi in x)
    # class-conditional samples start at entries the model classifies as the label (JEM's released protocol):
    # a buffer of flat images at three levels and logits that name the level, so the answer is known
    levels = torch.tensor([-0.8, 0.0, 0.8])
    m.sgld_buffer = levels.repeat(4).view(12, 1, 1, 1).expand(12, 1, 8, 8).clone()
    m.net_logits = lambda z, t=None: -100 * (z.mean((1, 2, 3))[:, None] - levels) ** 2
    xc, yc = m.sample(9, labels=[2, 0, 1, 1, 2, 0, 0, 2, 1], steps=1, seed=4)
    assert torch.allclose(xc.mean((1, 2, 3)), levels[yc], atol=1e-6), (xc.mean((1, 2, 3)), yc)
    w = EGC.load(export_weights(run, tmp_path / "w.safetensors"))
    assert w.sgld_buffer is None
    w.config.jem.sgld_step_size, w.config.jem.sgld_noise = 0.0, 0.0
    xw, _ = w.sample(5, steps=1, seed=3)
    assert not any(torch.equal(xw[0], bj) for bj in buf) and float(xw.std()) > 0.4  # uniform on [-1, 1]: std 0.58


def test_a_replay_buffer_of_the_wrong_shape_is_refused_in_one_line(npz: Path, tmp_path: Path) -> None:
    """Samples "from the run's buffer" must come from a buffer of the model's images, or loading says why not."""
    from safetensors.torch import load_file, save_file

    from egc.errors import CheckpointError
    from egc.model import EGC

    run = tmp_path / "j"
    assert main(tiny_train_argv(run, npz, 2, "--model", "jem", *JEM_FAST)) == 0
    path = latest_in(run)
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    t = load_file(str(path))
    t["jem.buffer"] = torch.zeros(16, 3, 8, 8)  # colour images for a one-channel model
    bad = tmp_path / "bad.safetensors"
    save_file(t, str(bad), metadata=md)
    with pytest.raises(CheckpointError, match=r"jem replay buffer has shape \(16, 3, 8, 8\).*\(1, 8, 8\)") as e:
        EGC.load(bad)
    assert "\n" not in str(e.value)

"""Label-conditioned energies, guidance on energies, the conditional ddpm and unsupervised EGC."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from egc.cli import main
from egc.config import RunConfig, load_config
from egc.diffusion import energy as en
from egc.diffusion.losses import _null_labels, ddpm_loss, egc_loss
from egc.diffusion.schedule import Schedule
from egc.errors import ConfigError, EgcError
from egc.model import EGC
from egc.nets import build_net

from .conftest import TINY, make_npz

K = 3


def _model(cond: str, kind: str = "egc", prior: str = "denoiser", seed: int = 0) -> tuple[torch.nn.Module, RunConfig]:
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", f"model.num_classes={K}", f"model.kind={kind}",
                             f"model.conditioning={cond}", f"model.energy_prior={prior}", "model.logit_scale=1"])  # hand-written logits below are unscaled
    torch.manual_seed(seed)
    net = build_net(cfg.model).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)  # a non-flat energy
    for name, p in net.named_parameters():  # residual branches zero at init would hide the label input
        if name.endswith("conv2.weight"):
            torch.nn.init.normal_(p, std=0.05)
    return net, cfg


def _pool(fmap: torch.Tensor) -> torch.Tensor:
    return en.pool_logits(fmap[:, :K], "attention")


@pytest.mark.parametrize("cond", ["embedding", "joint"])
def test_every_classification_path_uses_the_null_label(cond):
    net, cfg = _model(cond)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    clean = torch.full((4,), en.CLEAN_T)
    null_in = torch.full((4,), K) if cond == "embedding" else None
    want = _pool(net(x, clean, null_in) if null_in is not None else net(x, clean))
    m = EGC(net, cfg, None, "fp32")
    assert torch.allclose(m.logits(x.float().double()).double(), want.float().double(), atol=1e-5)
    em = en.EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps))
    assert torch.allclose(em.logits(x), want)
    if cond == "embedding":
        # Changing what the class labels embed changes E(x | y) but not the classifier (null label only).
        y = torch.tensor([0, 1, 2, 0])
        e_before = m.energy(x, 500, y=y)
        with torch.no_grad():
            net.label_emb.weight[:K] += 1.0
        assert torch.allclose(em.logits(x), want)
        assert not torch.allclose(m.energy(x, 500, y=y), e_before)


def test_null_label_rate_is_the_configured_one():
    y = torch.arange(20000) % K
    for p in (0.0, 0.1, 0.35, 1.0):
        cfg = load_config(None, [f"loss.null_prob={p}"])
        out = _null_labels(cfg.loss, y, torch.Generator().manual_seed(0))
        dropped = (out == en.NULL).float().mean().item()
        assert abs(dropped - p) < 0.015, (p, dropped)
        kept = out != en.NULL
        assert torch.equal(out[kept], y[kept])  # the others keep their own label


@pytest.mark.parametrize("kind,cond", [("egc", "embedding"), ("ddpm", "embedding")])
def test_the_diffusion_loss_feeds_the_network_null_labels_at_the_configured_rate(kind, cond):
    net, cfg = _model(cond, kind)
    net = net.float()
    cfg.loss.null_prob = 0.25
    seen: list[torch.Tensor] = []
    orig = net.forward

    def spy(x, t, labels=None):
        if labels is not None and (t >= 0).all():
            seen.append(labels.clone())
        return orig(x, t, labels)

    net.forward = spy
    x = torch.rand(4000, 1, 8, 8) * 2 - 1
    y = torch.arange(4000) % K
    loss = egc_loss if kind == "egc" else ddpm_loss
    cfg.loss.noisy_ce_weight = 0.0  # only the diffusion forward sees labels then
    with torch.no_grad() if kind == "ddpm" else torch.enable_grad():
        loss(en.EnergyModel(net, cfg.model, Schedule.make("ldm-linear")), cfg.loss, x, y, torch.Generator().manual_seed(0))
    labels = torch.cat(seen)
    null_share = (labels == K).float().mean().item()
    assert abs(null_share - 0.25) < 0.03, null_share
    assert torch.equal(labels[labels != K], y[labels != K])


@pytest.mark.parametrize("cond", ["none", "embedding", "joint"])
def test_guided_eps_is_the_gradient_of_the_combined_energy(cond):
    net, cfg = _model(cond)
    sched = Schedule.make("ldm-linear")
    em = en.EnergyModel(net, cfg.model, sched)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([50, 400, 900])
    y = torch.tensor([2, 0, 1])
    w, s = 1.5, 2.0
    a = sched.abar(t).double()

    def combined(z: torch.Tensor) -> torch.Tensor:
        """Written out from the network's raw map, independently of EnergyModel."""
        def e_of(fmap: torch.Tensor, lab: torch.Tensor | None) -> torch.Tensor:
            lm = fmap[:, :K]
            e = -torch.logsumexp(lm, 1).sum((1, 2)) if lab is None else -lm[torch.arange(3), lab].sum((1, 2))
            return e + en.denoiser_term(z, fmap[:, K:], a, cfg.model.sigma_data)

        null_map = net(z, t, torch.full((3,), K)) if cond == "embedding" else net(z, t)
        if cond == "embedding":
            e_y = e_of(net(z, t, y), None)
        elif cond == "joint":
            e_y = e_of(null_map, y)
        else:
            e_y = e_of(null_map, None)
        e = (1 + w) * e_y - w * e_of(null_map, None)
        logp = torch.log_softmax(_pool(null_map), 1)[torch.arange(3), y]
        return e - s * (1 - a).sqrt() * logp

    g = em.guided_eps(x, t, y, guidance=s, cfg_scale=w)
    h = 1e-6
    for idx in [(0, 0, 1, 2), (1, 0, 5, 7), (2, 0, 3, 3)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        fd = (combined(xp)[idx[0]] - combined(xm)[idx[0]]) / (2 * h)
        assert torch.allclose(g[idx], fd, rtol=1e-5, atol=1e-7), (cond, idx, float(g[idx]), float(fd))
    if cond == "none":  # no label input: classifier-free guidance changes nothing
        assert torch.allclose(em.guided_eps(x, t, y, s, 0.0), g)
    else:
        assert not torch.allclose(em.guided_eps(x, t, y, s, 0.0), g)


def test_joint_label_energy_picks_the_class_channel_and_null_is_logsumexp():
    net, cfg = _model("joint", prior="none")
    sched = Schedule.make("ldm-linear")
    em = en.EnergyModel(net, cfg.model, sched)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([10, 600])
    fmap = net(x, t)
    e_cls = em.energy(x, t, torch.tensor([1, en.NULL]))
    assert torch.allclose(e_cls[0], -fmap[0, 1].sum())
    assert torch.allclose(e_cls[1], -torch.logsumexp(fmap[1, :K], 0).sum())


def test_clean_token_energy_is_finite_and_score_refuses_it():
    net, cfg = _model("none", prior="denoiser")
    m = EGC(net.float(), cfg, None, "fp32")
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    e = m.energy(x, t=-1)
    assert torch.isfinite(e).all()
    # The clean energy is the logit energy alone (no denoiser term without a noise level).
    fmap = net(x, torch.full((2,), -1)).float()
    assert torch.allclose(e, -torch.logsumexp(fmap[:, :K], 1).sum((1, 2)), atol=1e-4)
    with pytest.raises(EgcError, match="noise level"):
        m.score(x, -1)
    with pytest.raises(EgcError, match="timestep out of range"):
        m.energy(x, t=1000)


def test_old_configs_load_as_what_they_were(tmp_path):
    old = load_config(None).to_dict()
    for sec, key in (("model", "conditioning"), ("model", "supervised"), ("model", "clusters"), ("model", "logit_scale")):
        del old[sec][key]
    del old["sample"]
    old["train"]["guidance"] = 42.0
    cfg = RunConfig.from_dict(old)
    assert cfg.model.conditioning == "none" and cfg.model.supervised and cfg.sample.guidance == 42.0 and cfg.sample.cfg == 0.0
    assert cfg.model.logit_scale == 1.0  # written before the scale existed: unscaled logits, whatever today's default
    # A checkpoint file written before conditioning existed: a tiny run's file with its config made old.
    from safetensors import safe_open
    from safetensors.torch import save_file

    from egc.checkpoint import latest_in

    npz = make_npz(tmp_path / "d.npz")
    assert main(_argv(tmp_path / "run", npz, 1, "--model", "egc")) == 0
    src = latest_in(tmp_path / "run")
    with safe_open(str(src), "pt") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    c = json.loads(md["config"])
    for sec, key in (("model", "conditioning"), ("model", "supervised"), ("model", "clusters")):
        del c[sec][key]
    del c["sample"]
    c["train"]["guidance"] = 42.0
    md["config"] = json.dumps(c)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=md)
    m = EGC.load(tmp_path / "old.safetensors", precision="fp32")
    assert m.config.model.conditioning == "none" and m.config.sample.guidance == 42.0 and m.config.sample.cfg == 0.0 and m.conditional
    imgs, _ = m.sample(3, class_balanced=True, steps=2)
    assert torch.isfinite(imgs).all()


def test_config_refuses_what_a_kind_cannot_do():
    with pytest.raises(ConfigError, match="classifier"):
        load_config(None, ["model.kind=classifier", "model.conditioning=embedding"])
    with pytest.raises(ConfigError, match="ddpm"):
        load_config(None, ["model.kind=ddpm", "model.conditioning=joint"])
    with pytest.raises(ConfigError, match="conditioning"):
        load_config(None, ["model.conditioning=cross"])
    with pytest.raises(ConfigError, match="null_prob"):
        load_config(None, ["loss.null_prob=1.5"])


def _argv(run, npz, steps, *extra):
    args = ["train", "--out", str(run), "--data", f"npz:{npz}", "--steps", str(steps), "--quiet", *extra]
    for s in TINY:
        args += ["--set", s]
    return args


@pytest.mark.parametrize("kind,cond", [("egc", "joint"), ("egc", "embedding"), ("ddpm", "embedding")])
def test_conditional_kinds_train_resume_and_sample_classes(tmp_path, kind, cond, capsys):
    npz = make_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(_argv(run, npz, 2, "--model", kind, "--set", f"model.conditioning={cond}")) == 0
    assert main(_argv(run, npz, 3, "--model", kind, "--resume")) == 0
    m = EGC.load(run, precision="fp32")
    assert m.config.model.conditioning == cond and m.conditional
    imgs, labels = m.sample(3, class_balanced=True, steps=2, cfg=1.0)
    assert imgs.shape == (3, 1, 8, 8) and labels.tolist() == [0, 1, 2]
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--n", "3", "--label", "1", "--steps", "2", "--cfg", "2", "--out", str(out), "--quiet"]) == 0
    assert out.is_file()
    with pytest.raises(EgcError, match="out of range"):
        m.sample(2, labels=[5, 0], steps=2)


def test_unconditional_ddpm_refuses_labels_in_one_line(tmp_path, capsys):
    npz = make_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(_argv(run, npz, 2, "--model", "ddpm")) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "3", "--class-balanced", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unconditional" in err


def test_unsupervised_egc_trains_on_unlabelled_images_and_reports_clusters(tmp_path, capsys):
    lab = make_npz(tmp_path / "lab.npz", n=48)
    with np.load(lab) as z:
        np.savez(tmp_path / "unlab.npz", images=z["images"])
    run = tmp_path / "run"
    assert main(_argv(run, tmp_path / "unlab.npz", 3, "--set", "model.clusters=4")) == 0
    assert "unsupervised" in capsys.readouterr().err
    m = EGC.load(run, precision="fp32")
    assert not m.supervised and not m.conditional and m.config.model.num_classes == 4
    assert m.class_names == [f"cluster {i}" for i in range(4)]
    # The cluster channels start apart (a zero start would keep them identical forever).
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    assert m.logits(x).std(dim=1).min() > 0
    imgs, labels = m.sample(2, steps=2)
    assert imgs.shape == (2, 1, 8, 8) and (labels == -1).all()
    with pytest.raises(EgcError, match="clusters"):
        m.sample(4, class_balanced=True, steps=2)
    with pytest.raises(EgcError, match="clusters"):
        m.eps(x, 10, y=torch.zeros(6, dtype=torch.long))
    # classify names clusters; eval reports purity against the labels the test set has
    from PIL import Image

    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "img.png")
    assert main(["classify", str(run), str(tmp_path / "img.png"), "--json"]) == 0
    assert '"name": "cluster' in capsys.readouterr().out
    js = tmp_path / "e.json"
    assert main(["eval", str(run), "--data", f"npz:{lab}", "--metrics", "acc,ece", "--json", str(js), "--quiet"]) == 0
    import json

    doc = json.loads(js.read_text())
    purity = doc["metrics"]["cluster_purity"]
    assert 0.333 <= purity <= 1 and "accuracy" not in doc["metrics"] and "clusters" in doc["skipped"]["ece"]


def test_cluster_purity_counts_the_majority_label_of_each_cluster():
    from egc.eval.evaluate import cluster_purity

    clusters = torch.tensor([0, 0, 0, 1, 1, 2])
    y = torch.tensor([1, 1, 2, 0, 0, 2])
    assert cluster_purity(clusters, y) == pytest.approx(5 / 6)
    assert cluster_purity(torch.zeros(6, dtype=torch.long), y) == pytest.approx(2 / 6)


def test_unlabelled_folder_loads_and_a_classifier_refuses_it(tmp_path, capsys):
    from PIL import Image

    from egc.data import load_dataset

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(d / f"{i}.png")
    ds = load_dataset(f"folder:{d}", "train")
    assert not ds.labeled and len(ds) == 12 and (ds.labels == -1).all()
    args = ["train", "--out", str(tmp_path / "r"), "--data", f"folder:{d}", "--steps", "1", "--quiet", "--model", "classifier"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no labels" in err


def test_sigma_data_follows_the_space_the_model_lives_in():
    """The energy prior's data scale: 0.5 for pixels in [-1, 1]; latent runs scale their latents to unit
    variance, so 1.0 there; an explicit value is kept, and old checkpoints keep the 0.5 they ran with."""
    assert load_config(None).model.sigma_data == 0.5
    assert load_config(None, ["model.autoencoder=some/ae/run"]).model.sigma_data == 1.0
    assert load_config(None, ["model.autoencoder=some/ae/run", "model.sigma_data=0.7"]).model.sigma_data == 0.7
    old = load_config(None, ["model.autoencoder=some/ae/run"]).to_dict()
    del old["model"]["sigma_data"]
    assert RunConfig.from_dict(old).validate().model.sigma_data == 0.5


def test_default_recipe_is_the_measured_one_per_kind():
    """No --config: a supervised EGC gets the joint energy, the denoiser prior, logit scale 10, noisy-CE
    weight 0.1 and clean-CE weight 0.02 (BENCHMARKS.md 2 and 7); the baselines keep what they are (an
    unconditional ddpm, a classifier with unscaled logits); an explicit scale is kept."""
    egc = load_config(None)
    got = (egc.model.conditioning, egc.model.energy_prior, egc.model.logit_scale, egc.loss.noisy_ce_weight, egc.loss.clean_ce_weight)
    assert got == ("joint", "denoiser", 10.0, 0.1, 0.02)
    assert load_config(None, ["model.kind=ddpm"]).model.conditioning == "none"
    assert load_config(None, ["model.kind=classifier"]).model.conditioning == "none"
    assert load_config(None, ["model.kind=classifier"]).model.logit_scale == 1.0
    assert load_config(None, ["model.supervised=false"]).model.conditioning == "none"
    assert load_config(None, ["model.supervised=false"]).model.logit_scale == 1.0
    assert load_config(None, ["model.logit_scale=3"]).model.logit_scale == 3.0
    from pathlib import Path

    configs = Path(__file__).resolve().parent.parent / "configs"
    assert load_config(configs / "fashion-mnist.yaml").model.logit_scale == 1.0  # zoo-v1's recipe, pinned
    assert load_config(configs / "cifar10.yaml").model.logit_scale == 10.0  # the new recipe, with its CE weights
    assert load_config(configs / "cifar10.yaml").loss.noisy_ce_weight == 0.1


@pytest.mark.parametrize("kind", ["egc", "ddpm"])
def test_guidance_interval_turns_both_guidances_off_outside_it(kind):
    net, cfg = _model("joint" if kind == "egc" else "embedding", kind=kind)
    m = EGC(net.float(), cfg, None, "fp32")
    seen: list[tuple[int, float, float]] = []
    inner = m._guided_eps

    def spy(x, t, y, guidance, cfg_scale):
        def one(v):  # a per-row scale: every row of a sampler step has the same t, so one value
            if isinstance(v, torch.Tensor):
                assert v.shape == (x.shape[0],) and len(set(v.tolist())) == 1
                return float(v[0])
            return v

        seen.append((int(t[0]), one(guidance), one(cfg_scale)))
        return inner(x, t, y, guidance, cfg_scale)

    m._guided_eps = spy
    base = m.sample(3, class_balanced=True, steps=4, guidance=0.0, cfg=0.0, seed=1)[0]
    seen.clear()
    guided = m.sample(3, class_balanced=True, steps=4, guidance=5.0, cfg=2.0, seed=1, guidance_interval=(0.3, 0.8))[0]
    T = m.schedule.num_steps
    assert len(seen) == 4
    for t, s, w in seen:  # on exactly inside the interval, both scales together
        assert (s, w) == ((5.0, 2.0) if 0.3 <= t / T <= 0.8 else (0.0, 0.0)), (t, s, w)
    assert {s for _, s, _ in seen} == {0.0, 5.0}  # the 4 DDIM steps straddle the interval
    assert not torch.allclose(guided, base)
    # An interval that holds no step is the unguided sampler, bit for bit; the default is the kind's:
    # t / T <= 0.6 for an EGC, every step for a ddpm (SampleConfig).
    off = m.sample(3, class_balanced=True, steps=4, guidance=5.0, cfg=2.0, seed=1, guidance_interval=(1.0, 1.0))[0]
    assert torch.equal(off, base)
    seen.clear()
    m.sample(3, class_balanced=True, steps=4, guidance=5.0, cfg=2.0, seed=1)
    tmax = 0.6 if kind == "egc" else 1.0
    assert (m.config.sample.guidance_tmin, m.config.sample.guidance_tmax) == (0.0, tmax)
    for t, s, w in seen:
        assert (s, w) == ((5.0, 2.0) if t / T <= tmax else (0.0, 0.0)), (t, s, w)
    assert any(s == 5.0 for _, s, _ in seen)


def test_guidance_interval_is_validated_stored_and_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="guidance_tmin"):
        load_config(None, ["sample.guidance_tmin=0.7", "sample.guidance_tmax=0.2"])
    npz = make_npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(_argv(run, npz, 2, "--model", "egc", "--set", "model.conditioning=joint")) == 0
    m = EGC.load(run, precision="fp32")
    with pytest.raises(ConfigError, match="guidance_tmin"):
        m.sample(3, class_balanced=True, steps=2, guidance_interval=(0.5, 1.5))
    capsys.readouterr()
    out = tmp_path / "s.png"
    with pytest.raises(SystemExit) as ex:
        main(["sample", str(run), "--n", "3", "--class-balanced", "--steps", "2", "--guidance-interval", "0.8,0.2", "--out", str(out)])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--guidance-interval" in err and not out.exists()
    w = tmp_path / "w.safetensors"
    assert main(["export", str(run), "--out", str(w), "--guidance-interval", "0.1,0.6"]) == 0
    s = EGC.load(w, precision="fp32").config.sample
    assert (s.guidance_tmin, s.guidance_tmax) == (0.1, 0.6)

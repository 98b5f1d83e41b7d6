"""Baselines (``egc train --model classifier|ddpm``): same UNet, data, loop and checkpoints as EGC."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from egc import EGC
from egc.checkpoint import load_checkpoint, save_checkpoint
from egc.cli import main
from egc.config import MODEL_KINDS, RunConfig, load_config
from egc.errors import ConfigError, EgcError
from egc.kinds import kind_of
from egc.nets import build_net

from .conftest import fit_fixed_batch, make_npz, tiny_train_argv

KINDS = ("egc", "classifier", "ddpm")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One 3-step run per kind, trained through the CLI exactly as a user would."""
    root = tmp_path_factory.mktemp("baselines")
    npz = make_npz(root / "tiny.npz")
    out = {}
    for kind in KINDS:
        run = root / kind
        assert main(tiny_train_argv(run, npz, 3, "--model", kind)) == 0
        out[kind] = run
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_every_kind_has_a_loss():
    from egc.kinds import KINDS as REGISTRY

    # every kind of the registry names a pure objective (jem's is given SGLD samples by train/jem.py's buffer)
    for name, k in REGISTRY.items():
        assert k.name == name and callable(k.loss()) and k.loss().__name__ in {"egc_loss", "classifier_loss", "ddpm_loss", "jem_loss", "autoencoder_loss"}
    assert set(MODEL_KINDS) == set(REGISTRY) - {"autoencoder"}
    assert set(KINDS) <= set(MODEL_KINDS)


def test_runs_record_kind_and_log_only_meaningful_metrics(runs):
    for kind, run in runs.items():
        ck = load_checkpoint(run)
        assert ck.step == 3 and ck.config.model.kind == kind
        assert f"kind: {kind}" in (run / "config.yaml").read_text()
        with open(run / "log.csv") as f:
            cols = set(next(csv.reader(f)))
        assert "total" in cols
        assert ("mse" in cols) == (kind != "classifier")
        assert ("clean_acc" in cols) == (kind != "ddpm")  # no fake accuracy for the ddpm baseline
        grids = list((run / "samples").glob("*.png")) if (run / "samples").exists() else []
        assert bool(grids) == (kind != "classifier")  # a classifier draws no grid
    # Same backbone: the baselines differ from EGC (default gaussian prior) in the output conv only.
    sizes = {k: load_checkpoint(r).group("model") for k, r in runs.items()}
    assert set(sizes["egc"]) == set(sizes["classifier"]) == set(sizes["ddpm"])
    assert sizes["ddpm"]["out.weight"].shape[0] == 1 and sizes["classifier"]["out.weight"].shape[0] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_loss_decreases_on_a_fixed_tiny_batch(kind):
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", f"model.kind={kind}"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    y = torch.arange(12) % 3
    x0 = torch.full((12, 1, 8, 8), -0.8) + 0.1 * torch.randn(12, 1, 8, 8)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x0[i, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 0.8
    before, after, _ = fit_fixed_batch(kind_of(kind).loss(), net, cfg, x0, y, steps=20)
    assert after < 0.8 * before, (kind, before, after)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_reload_gives_the_ema_networks_outputs(runs, kind):
    """A loaded checkpoint computes what a network built from its config with the file's EMA tensors computes
    (not the raw weights, which differ after three steps), read the way its kind says."""
    from egc.diffusion import energy as en
    from egc.diffusion.schedule import Schedule

    ck = load_checkpoint(runs[kind])
    m = EGC.load(runs[kind], "fp32")
    assert m.kind == kind and any(not torch.equal(ck.group("ema")[k], ck.group("model")[k]) for k in ck.group("ema"))
    net = build_net(ck.config.model)
    net.load_state_dict(ck.group("ema"))
    net.eval()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    t = torch.full((4,), 100)
    by_hand = en.EnergyModel(net, ck.config.model, Schedule.make(ck.config.diffusion.schedule, ck.config.diffusion.steps))
    if kind != "ddpm":
        logits = by_hand.logits(x)
        assert logits.shape == (4, 3) and torch.equal(m.logits(x), logits)
    if kind == "classifier":
        assert torch.allclose(m.energy(x), -torch.logsumexp(logits, 1), atol=1e-6)  # its OOD score: the logit energy
    if kind == "egc":
        assert torch.allclose(m.eps(x, 100), by_hand.eps_and_logits(x, t)[0], atol=1e-6)
    if kind == "ddpm":
        with torch.no_grad():
            assert torch.allclose(m.eps(x, 100), net(x, t), atol=1e-6)  # eps is the network's output itself


def test_classifier_api(runs):
    m = EGC.load(runs["classifier"], "fp32")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(m.logits(x, 500), m.logits(x))  # no timesteps: t is ignored
    assert torch.allclose(m.energy(x), -torch.logsumexp(m.logits(x), 1))
    assert torch.allclose(m.predict_proba(x).sum(1), torch.ones(3))
    for call in (lambda: m.sample(2, steps=2), lambda: m.eps(x, 10), lambda: m.score(x, 10)):
        with pytest.raises(EgcError, match="classifier checkpoint cannot generate"):
            call()


def test_ddpm_api(runs):
    m = EGC.load(runs["ddpm"], "fp32")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    imgs, labels = m.sample(3, steps=2, sampler="dpm++2m")
    assert imgs.shape == (3, 1, 8, 8) and labels.tolist() == [-1, -1, -1]
    abar = float(m.schedule.alphas_cumprod[10])
    assert torch.allclose(m.score(x, 10), -m.eps(x, 10) / (1 - abar) ** 0.5, atol=1e-5)  # score = -eps / sqrt(1 - abar_t)
    for call in (lambda: m.logits(x), lambda: m.predict_proba(x), lambda: m.energy(x)):
        with pytest.raises(EgcError, match="ddpm checkpoint cannot classify"):
            call()
    for call in (lambda: m.sample(3, labels=[0, 1, 2], steps=2), lambda: m.sample(3, class_balanced=True, steps=2),
                 lambda: m.eps(x, 10, y=torch.zeros(3, dtype=torch.long), guidance=1.0)):
        with pytest.raises(EgcError, match="unconditional"):
            call()


def test_cli_sample_and_classify_per_kind(runs, tmp_path, capsys):
    img = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    grid = tmp_path / "g.png"
    sample = ["--n", "2", "--steps", "2", "--out", str(grid), "--quiet"]
    assert main(["sample", str(runs["ddpm"]), *sample]) == 0 and grid.is_file()
    capsys.readouterr()
    assert main(["sample", str(runs["ddpm"]), "--label", "c1", *sample]) == 2
    assert "unconditional" in _err(capsys)
    assert main(["sample", str(runs["classifier"]), *sample]) == 2
    assert "cannot generate" in _err(capsys)
    assert main(["classify", str(runs["classifier"]), str(img), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and "energy" in rows[0] and rows[0]["top"][0]["name"] in ("c0", "c1", "c2")
    assert main(["classify", str(runs["ddpm"]), str(img)]) == 2
    assert "cannot classify" in _err(capsys)


def test_unknown_kind_and_kind_mismatch_on_resume(runs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="model.kind 'gan' unknown"):
        load_config(None, ["model.kind=gan"])
    capsys.readouterr()
    assert main(["train", "--model", "gan", "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "model.kind 'gan'" in _err(capsys) and not (tmp_path / "x").exists()
    # A run keeps its kind: resuming it as another kind is refused before anything is written.
    before = sorted(p.name for p in (runs["ddpm"] / "checkpoints").iterdir())
    assert main(["train", "--out", str(runs["ddpm"]), "--resume", "--model", "egc", "--steps", "4", "--quiet"]) == 2
    assert "'ddpm'" in _err(capsys)
    assert sorted(p.name for p in (runs["ddpm"] / "checkpoints").iterdir()) == before


def test_configs_and_checkpoints_from_before_model_kind_load_as_egc(runs, tmp_path):
    old = RunConfig().to_dict()
    del old["model"]["kind"]
    old["loss"]["kind"] = "egc"  # what earlier versions wrote
    assert RunConfig.from_dict(old).model.kind == "egc"
    y = tmp_path / "old.yaml"
    y.write_text("loss:\n  kind: egc\n")
    assert load_config(y).model.kind == "egc" and load_config(y, ["model.kind=ddpm"]).model.kind == "ddpm"
    with pytest.raises(ConfigError, match="model.kind"):
        load_config(None, ["loss.kind=ddpm"])
    # An old checkpoint: its config JSON has loss.kind and no model.kind.
    ck = load_checkpoint(runs["egc"])
    path = save_checkpoint(tmp_path / "old.safetensors", ck.config, ck.step, {"ema": ck.group("ema")}, kind="weights",
                           meta=ck.meta)
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = dict(f.metadata())
    cfg = json.loads(md["config"])
    del cfg["model"]["kind"]
    cfg["loss"]["kind"] = "egc"
    md["config"] = json.dumps(cfg)
    save_file(load_file(str(path)), str(path), metadata=md)
    m = EGC.load(path, "fp32")
    assert m.kind == "egc"
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(m.logits(x), EGC.load(runs["egc"], "fp32").logits(x))


def test_cag_from_baseline_checkpoints(runs, tmp_path, capsys):
    """CaG paints from a classifier baseline's head; a ddpm baseline has no classifier to paint from."""
    out = tmp_path / "c.png"
    args = ["--target", "c1", "--n", "2", "--steps", "2", "--quiet", "--out", str(out)]
    assert main(["cag", "--classifier", f"egc:{runs['classifier']}", *args]) == 0 and out.is_file()
    out.unlink()
    capsys.readouterr()
    assert main(["cag", "--classifier", f"egc:{runs['ddpm']}", *args]) == 2
    assert "classif" in _err(capsys) and not out.exists()


@pytest.mark.parametrize("kind", ["egc", "classifier"])
def test_cag_adapter_logits_are_the_models_own(runs, kind):
    """The CaG adapter classifies as EGC.logits does (clean token), with gradients to the input."""
    from egc.cag import load_classifier

    clf = load_classifier(f"egc:{runs[kind]}")
    x01 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    got = clf(x01)
    want = EGC.load(str(runs[kind]), precision="fp32").logits(x01.detach() * 2 - 1)  # the adapter runs in fp32
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-5)
    got[:, 0].sum().backward()
    assert x01.grad is not None and x01.grad.abs().sum() > 0


def test_score_and_eps_share_their_defaults(runs):
    """EGC.score is -eps / sqrt(1 - abar_t) of EGC.eps called the same way, labels included: one default
    (no guidance) for both. Classifier guidance is shown to change the conditional score."""
    m = EGC.load(runs["egc"], "fp32")
    x = torch.rand(2, *m.image_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.tensor([0, 1])
    root = (1 - float(m.schedule.alphas_cumprod[10])) ** 0.5
    assert torch.allclose(m.score(x, 10, y), -m.eps(x, 10, y) / root, atol=1e-5)
    assert torch.allclose(m.score(x, 10, y, guidance=5.0), -m.eps(x, 10, y, guidance=5.0) / root, atol=1e-5)
    assert not torch.allclose(m.score(x, 10, y, guidance=5.0), m.score(x, 10, y), atol=1e-6)

"""Latent EGC: the KL autoencoder (``egc train --model autoencoder``) and runs on its latents
(``model.autoencoder``), whose checkpoints embed the frozen autoencoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from egc import EGC
from egc.autoencoder import Autoencoder, load_autoencoder, measure_latent_scale
from egc.checkpoint import load_checkpoint, save_checkpoint
from egc.cli import main
from egc.config import AutoencoderConfig, load_config
from egc.kinds import kind_of
from egc.errors import CheckpointError, ConfigError, EgcError
from egc.nets import build_net
from egc.nets.autoencoder import KLAutoencoder
from egc.train.loop import _encode_own_rows

from .conftest import TINY, TINY_AE, fit_fixed_batch, make_npz


def _train(args: list[str], sets: list[str]) -> int:
    for s in sets:
        args += ["--set", s]
    return main(["train", *args, "--quiet"])


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An autoencoder run, then a latent EGC run on it; the autoencoder's folder is then moved away
    (the latent run must not need it any more)."""
    root = tmp_path_factory.mktemp("latent")
    npz = make_npz(root / "tiny.npz")
    ae_run, lat = root / "ae", root / "latent"
    assert _train(["--model", "autoencoder", "--out", str(ae_run), "--data", f"npz:{npz}", "--steps", "3"], TINY + TINY_AE) == 0
    keep = root / "ae-kept"
    shutil.copytree(ae_run, keep)
    assert _train(["--out", str(lat), "--data", f"npz:{npz}", "--steps", "3"], TINY + [f"model.autoencoder={ae_run}"]) == 0
    shutil.rmtree(ae_run)
    return {"npz": npz, "ae": keep, "latent": lat, "ae_gone": ae_run}


def test_autoencoder_loss_decreases_on_a_fixed_tiny_batch():
    cfg = load_config(None, ["model.kind=autoencoder", "model.ae.in_channels=1", "model.ae.image_size=8", *TINY_AE])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    assert isinstance(net, KLAutoencoder)
    x0 = torch.full((8, 1, 8, 8), -0.8) + 0.1 * torch.randn(8, 1, 8, 8)
    x0[::2, :, :4, :4] = 0.8
    y = torch.zeros(8, dtype=torch.long)
    before, after, parts = fit_fixed_batch(kind_of("autoencoder").loss(), net, cfg, x0, y, steps=25)
    assert set(parts.scalars()) == {"total", "mse", "recon", "kl"}
    assert after < 0.8 * before


def test_encode_decode_shapes_and_scale():
    torch.manual_seed(0)
    net = KLAutoencoder(AutoencoderConfig(in_channels=3, image_size=32, latent_channels=4, downsample=4, channels=8))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec, mean, logvar = net(x, torch.randn(2, 4, 8, 8))
    assert rec.shape == x.shape and mean.shape == logvar.shape == (2, 4, 8, 8)
    ae = Autoencoder(net)
    assert ae.latent_shape == (4, 8, 8) and ae.pixel_shape == (3, 32, 32)
    scale = measure_latent_scale(ae, x)
    ae.scale = scale
    z = ae.encode(x)
    assert z.shape == (2, 4, 8, 8) and float(z.std()) == pytest.approx(1.0, rel=1e-3)
    out = ae.decode(z)
    assert out.shape == x.shape and out.abs().max() <= 1
    with pytest.raises(EgcError, match=r"does not match the autoencoder's \[B, 3, 32, 32\]"):
        ae.encode(torch.zeros(1, 1, 32, 32))


def test_encode_rows_matches_the_rows_a_data_parallel_loss_keeps():
    torch.manual_seed(0)
    ae = Autoencoder(KLAutoencoder(AutoencoderConfig(in_channels=3, image_size=32, latent_channels=4, downsample=4, channels=8)))
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    full = ae.encode(x)
    assert torch.equal(_encode_own_rows(ae, x, (0, 1)), full)
    for rank in range(3):
        z = _encode_own_rows(ae, x, (rank, 3))
        assert z.shape == full.shape
        torch.testing.assert_close(z[rank::3], full[rank::3], rtol=1e-5, atol=1e-6)
        others = [i for i in range(6) if i % 3 != rank]
        assert z[others].abs().max() == 0  # never read: the loss keeps rows rank::world only


def test_config_validation():
    with pytest.raises(ConfigError, match="model.ae.downsample must be"):
        load_config(None, ["model.ae.downsample=3"])
    with pytest.raises(ConfigError, match="loss.recon must be l1 or mse"):
        load_config(None, ["loss.recon=l2"])
    with pytest.raises(ConfigError, match="model.autoencoder is for latent runs"):
        load_config(None, ["model.kind=autoencoder", "model.autoencoder=x"])
    with pytest.raises(ConfigError, match="model.latent_scale must be >= 0"):
        load_config(None, ["model.latent_scale=-1"])


def test_autoencoder_run(runs):
    ck = load_checkpoint(runs["ae"])
    assert ck.step == 3 and ck.config.model.kind == "autoencoder"
    assert (ck.config.model.ae.in_channels, ck.config.model.ae.image_size) == (1, 8)
    assert list((runs["ae"] / "samples").glob("*.png"))  # originals above reconstructions
    assert "recon" in (runs["ae"] / "log.csv").read_text().splitlines()[0]
    ae = load_autoencoder(runs["ae"])
    assert ae.latent_shape == (2, 4, 4)
    with pytest.raises(CheckpointError, match="autoencoder checkpoint"):
        EGC.load(runs["ae"])


def test_latent_scale_and_autoencoder_in_every_checkpoint(runs):
    ck = load_checkpoint(runs["latent"])
    m = ck.config.model
    assert m.latent and m.latent_scale > 0 and (m.in_channels, m.image_size) == (2, 4)
    assert (m.ae.in_channels, m.ae.image_size, m.ae.downsample) == (1, 8, 2)
    saved = yaml.safe_load((runs["latent"] / "config.yaml").read_text())
    assert saved["model"]["latent_scale"] == m.latent_scale
    ae_t = ck.group("ae")
    assert ae_t and all(torch.equal(ae_t[k], v) for k, v in load_checkpoint(runs["ae"]).inference_weights().items())
    assert list((runs["latent"] / "samples").glob("*.png"))


def test_latent_model_loads_without_the_autoencoder_file(runs, tmp_path, capsys):
    assert not runs["ae_gone"].exists()
    m = EGC.load(runs["latent"], "fp32")
    assert m.image_shape == (1, 8, 8) and m.latent_shape == (2, 4, 4)
    imgs, labels = m.sample(3, class_balanced=True, steps=2)
    assert imgs.shape == (3, 1, 8, 8) and imgs.abs().max() <= 1 and labels.tolist() == [0, 1, 2]
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    p = m.predict_proba(x)
    assert p.shape == (4, 3) and torch.allclose(p.sum(1), torch.ones(4))
    # classification and the energy go through the encoder's scaled posterior mean; eps works on latents
    z = m.autoencoder.encode(x)
    assert z.shape == (4, 2, 4, 4) and torch.allclose(p, torch.softmax(m.energy_model.logits(z), 1), atol=1e-6)
    assert torch.allclose(m.energy(x), m.energy_model.energy(z, torch.zeros(4, dtype=torch.long)), atol=1e-5)
    zt = torch.randn(2, 2, 4, 4)
    assert torch.allclose(m.eps(zt, 10), m.energy_model.eps_and_logits(zt, torch.full((2,), 10))[0], atol=1e-5)
    # The CLI works unchanged on a latent checkpoint.
    img = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert main(["classify", str(runs["latent"]), str(img), "--json", "--top-k", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows[0]["top"]) == 3 and sum(t["prob"] for t in rows[0]["top"]) == pytest.approx(1, abs=1e-3)
    grid = tmp_path / "g.png"
    assert main(["sample", str(runs["latent"]), "--n", "3", "--class-balanced", "--steps", "2", "--out", str(grid), "--quiet"]) == 0
    assert grid.is_file()
    # export keeps the autoencoder
    w = tmp_path / "w.safetensors"
    assert main(["export", str(runs["latent"]), "--out", str(w)]) == 0
    assert torch.equal(EGC.load(w, "fp32").predict_proba(x), p)


def test_resume_latent_run(runs, tmp_path):
    run = tmp_path / "lat"
    shutil.copytree(runs["latent"], run)
    before = load_checkpoint(run)
    assert _train(["--out", str(run), "--resume", "--steps", "5"], []) == 0
    after = load_checkpoint(run)
    assert after.step == 5 and after.config.model.latent_scale == before.config.model.latent_scale
    assert all(torch.equal(after.group("ae")[k], v) for k, v in before.group("ae").items())
    assert EGC.load(run, "fp32").sample(2, steps=2)[0].shape == (2, 1, 8, 8)


def test_a_latent_model_lends_its_embedded_autoencoder(runs, tmp_path):
    """model.autoencoder may name a latent model (its autoencoder's own run folder may be gone): the new
    run gets the same frozen weights and measures its own latent scale."""
    lent = load_autoencoder(runs["latent"])
    assert lent.scale == 1.0 and lent.latent_shape == (2, 4, 4)
    run = tmp_path / "ddpm"
    assert _train(["--model", "ddpm", "--out", str(run), "--data", f"npz:{runs['npz']}", "--steps", "1"],
                  TINY + [f"model.autoencoder={runs['latent']}"]) == 0
    new, old = load_checkpoint(run), load_checkpoint(runs["latent"])
    assert new.group("ae").keys() == old.group("ae").keys()
    assert all(torch.equal(new.group("ae")[k], v) for k, v in old.group("ae").items())
    assert new.config.model.latent_scale == pytest.approx(old.config.model.latent_scale, rel=1e-5)
    # The shipped latent model lends its 8x8x8 autoencoder the same way (no file other than the package's).
    assert load_autoencoder("zoo:cifar10").latent_shape == (8, 8, 8)


def _rgb(npz: Path, out: Path) -> Path:
    """The images of ``npz`` repeated over three channels (another channel count than a grey autoencoder's)."""
    with np.load(npz) as z:
        np.savez(out, images=np.repeat(z["images"], 3, axis=-1), labels=z["labels"], class_names=z["class_names"])
    return out


def test_bad_autoencoder_errors(runs, tmp_path, capsys):
    npz = runs["npz"]
    pixel = tmp_path / "pixel"
    assert _train(["--model", "classifier", "--out", str(pixel), "--data", f"npz:{npz}", "--steps", "1"], TINY) == 0
    # a latent checkpoint that lost its embedded autoencoder cannot lend it
    ck = load_checkpoint(runs["latent"])
    stripped = save_checkpoint(tmp_path / "stripped.safetensors", ck.config, ck.step, {"ema": ck.group("ema")}, kind="weights", meta=ck.meta)
    cases = [
        (f"model.autoencoder={stripped}", npz, f"model.autoencoder: {stripped}: a latent checkpoint"),
        (f"model.autoencoder={tmp_path / 'nope'}", npz, "model.autoencoder: checkpoint not found"),
        (f"model.autoencoder={pixel}", npz, "on pixels, not an autoencoder"),
        (f"model.autoencoder={runs['ae']}", _rgb(npz, tmp_path / "rgb.npz"), "has 3x8x8 images (CxHxW) but the autoencoder"),
    ]
    for i, (setting, data, msg) in enumerate(cases):
        out = tmp_path / f"x{i}"
        assert _train(["--out", str(out), "--data", f"npz:{data}", "--steps", "1"], TINY + [setting]) == 2
        err = _err(capsys)
        assert msg in err, err
        assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("kind", ["classifier", "ddpm"])
def test_latent_baselines(runs, tmp_path, kind):
    run = tmp_path / kind
    assert _train(["--model", kind, "--out", str(run), "--data", f"npz:{runs['npz']}", "--steps", "2"],
                  TINY + [f"model.autoencoder={runs['ae']}"]) == 0
    m = EGC.load(run, "fp32")
    assert m.kind == kind and m.image_shape == (1, 8, 8) and m.latent_shape == (2, 4, 4)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    if kind == "classifier":  # through the encoder, like EGC
        assert torch.allclose(m.predict_proba(x), torch.softmax(m.energy_model.logits(m.autoencoder.encode(x)), 1), atol=1e-6)
    else:  # samples are decoded latents: the decoder's image of what the sampler ends at
        imgs = m.sample(2, steps=2)[0]
        assert imgs.shape == (2, 1, 8, 8) and imgs.abs().max() <= 1


def test_inference_side_imports_no_training_code():
    import subprocess
    import sys

    code = "import sys, egc.model, egc.autoencoder; print(sorted(m for m in sys.modules if m.startswith('egc.train')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_eval_of_a_latent_model(runs, tmp_path):
    """egc eval works in pixels for a latent model: accuracy through the encoder, noisy accuracy on
    noised latents, attacks through the encoder (the differentiable path matches the deployed one)
    and energy OOD scores."""
    out = tmp_path / "e.json"
    assert main(["eval", str(runs["latent"]), "--data", f"npz:{runs['npz']}", "--metrics", "acc,noisy_acc,robust,ood", "--n-test", "8",
                 "--noise-t", "10,500", "--n-robust", "4", "--pgd-steps", "2", "--eps-linf", "0.1", "--eps-l2", "0.5", "--no-sanity",
                 "--ood-sets", "uniform", "--quiet", "--json", str(out)]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert 0 <= m["accuracy"] <= 1 and set(m["noisy_accuracy"]) == {"10", "500"}
    assert m["robust"]["sanity"]["attack_path_max_abs_diff"] < 1e-4 and 0 <= m["robust"]["linf"]["0.1"] <= 1
    assert 0 <= m["ood_auroc"]["uniform_noise"] <= 1
    # The clean accuracy is the one EGC.logits gives (through the encoder's posterior mean).
    from egc.eval.evaluate import load_test_set

    model = EGC.load(str(runs["latent"]))
    x, y, _, _ = load_test_set(model, f"npz:{runs['npz']}", None, 8, 0)  # eval's images (seed 0 is its default)
    assert x.shape[1:] == model.image_shape  # pixels, not latents
    assert m["accuracy"] == pytest.approx(float((model.logits(x).argmax(1) == y).double().mean()))


def test_cag_from_a_latent_model_paints_pixels_through_its_encoder(runs, tmp_path):
    """CaG on a latent model's head: pixel images in, the gradient passes back through the frozen
    encoder (the logits are EGC.logits', and d logit / d pixel matches a finite difference)."""
    from egc.cag.adapters import load_classifier

    clf = load_classifier(f"egc:{runs['latent']}")
    model = EGC.load(str(runs["latent"]), precision="fp32")
    assert (clf.channels, clf.input_size) == (model.image_shape[0], model.image_shape[1])
    x = torch.rand(2, *model.image_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert torch.allclose(clf(x), model.logits(x * 2 - 1), atol=1e-5)
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(clf(xg)[:, 0].sum(), xg)
    assert g.abs().sum() > 0
    # the directional derivative along g (central difference, float32) is |g|: the gradient is the logit's
    u, h = g / g.norm(), 1e-2
    with torch.no_grad():
        fd = (clf(x + h * u)[:, 0].sum() - clf(x - h * u)[:, 0].sum()) / (2 * h)
    assert float(fd) == pytest.approx(float(g.norm()), rel=2e-2)
    out = tmp_path / "c.png"
    assert main(["cag", "--classifier", f"egc:{runs['latent']}", "--target", "0", "--n", "1", "--steps", "2", "--quiet", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_cag_in_a_latent_models_own_latents(runs, tmp_path):
    """param "latent" (egc cag's default for a latent head): the head's latents are optimised, at the noisy
    timestep of the annealed noise, and the images are their decodings; the class logit rises."""
    from egc.cag import CaGConfig, generate
    from egc.cag.adapters import load_classifier
    from egc.cag.generate import recommended_config
    from egc.cag.stats import PixelPrior
    from egc.errors import EgcError

    clf = load_classifier(f"egc:{runs['latent']}")
    cfg = recommended_config(clf, clf.input_size, steps=6, batch=2, lr=0.2)
    assert cfg.parameterisation == "latent" and cfg.noise > 0
    z = torch.randn(2, *clf.latent_shape, generator=torch.Generator().manual_seed(0))
    decoded = clf.decode(z)
    assert decoded.shape == (2, *clf.model.image_shape) and 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    seen: list[torch.Tensor] = []
    decode = clf.decode

    def recording_decode(zz: torch.Tensor) -> torch.Tensor:
        seen.append(zz.detach().clone())
        return decode(zz)
    clf.decode = recording_decode  # the images are decodings of the optimised latents: keep those latents
    imgs = generate(clf, 1, 2, cfg, progress=False)
    assert imgs.shape == decoded.shape and torch.equal(imgs, decode(seen[-1]))
    assert torch.equal(generate(clf, 1, 2, cfg, progress=False), imgs)  # seeded
    start = torch.randn(2, *clf.latent_shape, generator=torch.Generator().manual_seed(0))  # the loop's first draw
    clean = dict(cfg.to_dict(), noise=0.0, steps=20)
    generate(clf, 1, 2, CaGConfig(**clean), progress=False)
    before = clf.forward_latent(start, 0.0, torch.Generator())[0]
    after = clf.forward_latent(seen[-1], 0.0, torch.Generator())[0]
    assert float(torch.log_softmax(after, 1)[:, 1].mean()) > float(torch.log_softmax(before, 1)[:, 1].mean())
    clf.decode = decode
    # a data-seeded start needs a prior of latents; a pixel prior is refused in one line
    x = torch.rand(6, *clf.model.image_shape, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    good = PixelPrior.fit(clf.encode(x), y, rank=2)
    assert generate(clf, 1, 1, CaGConfig(**dict(clean, init="data", steps=1)), prior=good, progress=False).shape[0] == 1
    with pytest.raises(EgcError, match="fit it on encoded images"):
        generate(clf, 1, 1, CaGConfig(**dict(clean, init="data", steps=1)), prior=PixelPrior.fit(x, y, rank=2), progress=False)
    with pytest.raises(EgcError, match="needs a latent EGC model"):
        generate(_pixel_head(tmp_path), 1, 1, CaGConfig(size=8, param="latent", steps=1), progress=False)


def _pixel_head(tmp: Path):
    from egc.cag.adapters import load_classifier

    npz = make_npz(tmp / "p.npz", n=24)
    assert _train(["--out", str(tmp / "pix"), "--data", f"npz:{npz}", "--steps", "1"], TINY) == 0
    return load_classifier(f"egc:{tmp / 'pix'}")

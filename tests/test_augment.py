"""loss.clean_shift: the clean-CE view's random translation (data/augment.py and its use in training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from egc.checkpoint import load_checkpoint
from egc.cli import main
from egc.config import load_config
from egc.data.augment import random_shift
from egc.diffusion.energy import EnergyModel
from egc.diffusion import losses
from egc.diffusion.schedule import Schedule
from egc.errors import ConfigError
from egc.nets import build_net

from .conftest import make_npz, tiny_train_argv


def test_random_shift_is_a_translation_with_reflected_edges():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, gen)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for b in range(2):  # each image is some 8 x 8 window of its reflect-padded self, offsets in [0, 4]
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(y[b], padded[b, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1
    # deterministic in the generator, and the offsets differ across images and draws
    assert torch.equal(random_shift(x, 2, torch.Generator().manual_seed(0)), y)
    draws = {tuple(random_shift(x, 2, gen)[0, 0, :, 0].tolist()) for _ in range(20)}
    assert len(draws) > 3
    assert random_shift(x, 0, gen) is x
    with pytest.raises(ValueError, match="smaller than the image"):
        random_shift(x, 8, gen)


def test_egc_loss_takes_the_clean_view_for_the_clean_ce_only():
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "loss.clean_fraction=0.5"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    em = EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps))
    x, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3
    view = random_shift(x[:4], 2, torch.Generator().manual_seed(5))

    def parts(**kw):
        return losses.egc_loss(em, cfg.loss, x, y, torch.Generator().manual_seed(1), **kw)

    plain, same, shifted = parts(), parts(x0_clean=x[:4]), parts(x0_clean=view)
    assert float(same.clean_ce) == pytest.approx(float(plain.clean_ce), rel=1e-6)
    assert float(shifted.clean_ce) != pytest.approx(float(plain.clean_ce), rel=1e-4)
    # the diffusion and noisy-CE terms do not see the view
    assert float(shifted.mse) == pytest.approx(float(plain.mse), rel=1e-6)
    assert float(shifted.noisy_ce) == pytest.approx(float(plain.noisy_ce), rel=1e-6)
    with pytest.raises(ValueError, match="clean share is 4"):
        parts(x0_clean=x[:3])


@pytest.mark.parametrize("kind", ["egc", "classifier"])
def test_training_with_clean_shift_runs_resumes_and_is_saved_in_the_config(tmp_path: Path, kind: str):
    npz = make_npz(tmp_path / "d.npz", n=24, size=8)
    run = tmp_path / kind
    assert main(tiny_train_argv(run, npz, 2, "--model", kind, "--set", "loss.clean_shift=2")) == 0
    assert main(tiny_train_argv(run, npz, 3, "--model", kind, "--resume")) == 0
    ck = load_checkpoint(str(run))
    assert ck.step == 3 and ck.config.loss.clean_shift == 2


def test_clean_shift_is_validated_in_one_line(tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match="loss.clean_shift"):
        load_config(None, ["loss.clean_shift=-1"])
    npz = make_npz(tmp_path / "d.npz", n=24, size=8)
    assert main(tiny_train_argv(tmp_path / "r", npz, 1, "--set", "loss.clean_shift=4")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].count("loss.clean_shift 4 is too large for 8 x 8") == 1

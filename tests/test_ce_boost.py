"""loss.ce_boost: EGC's two CE weights start ce_boost times higher and fall linearly to their configured
values at step ce_boost_steps; old checkpoints (no such field) keep them constant."""

from __future__ import annotations

import pytest

from egc.config import ConfigError, LossConfig, RunConfig, load_config
from egc.diffusion import losses
from egc.diffusion.losses import ce_boost_at, loss_config_at
from egc.train.loop import train


def test_the_factor_falls_linearly_to_one():
    lc = LossConfig(ce_boost=5.0, ce_boost_steps=100)
    assert [ce_boost_at(lc, s) for s in (0, 25, 50, 99, 100, 5000)] == pytest.approx([5.0, 4.0, 3.0, 1.04, 1.0, 1.0])
    assert ce_boost_at(LossConfig(ce_boost=1.0, ce_boost_steps=100), 0) == 1.0
    assert ce_boost_at(LossConfig(ce_boost=5.0, ce_boost_steps=0), 0) == 1.0


def test_the_scaled_config_changes_only_the_two_ce_weights():
    lc = LossConfig(noisy_ce_weight=0.1, clean_ce_weight=0.02, ce_boost=3.0, ce_boost_steps=10)
    at0 = loss_config_at(lc, 0)
    assert (at0.noisy_ce_weight, at0.clean_ce_weight) == pytest.approx((0.3, 0.06))
    assert {k: v for k, v in vars(at0).items() if "ce_weight" not in k} == {k: v for k, v in vars(lc).items() if "ce_weight" not in k}
    assert loss_config_at(lc, 10) is lc  # the factor is 1: nothing copied
    assert (lc.noisy_ce_weight, lc.clean_ce_weight) == (0.1, 0.02)  # the run's own config is never changed


def test_old_checkpoints_keep_constant_weights_and_bad_values_are_refused():
    old = RunConfig().to_dict()
    del old["loss"]["ce_boost"]
    assert RunConfig.from_dict(old).loss.ce_boost == 1.0
    assert RunConfig().loss.ce_boost > 1  # new runs boost
    with pytest.raises(ConfigError, match="loss.ce_boost"):
        load_config(None, ["loss.ce_boost=0.5"])
    with pytest.raises(ConfigError, match="loss.ce_boost_steps"):
        load_config(None, ["loss.ce_boost_steps=-1"])


def test_the_trainer_gives_the_loss_the_boosted_weights_step_by_step(tmp_path, tiny_overrides, monkeypatch):
    seen: list[tuple[float, float]] = []
    orig = losses.egc_loss

    def spy(em, lcfg, x, y, gen=None, shard=(0, 1), **kw):
        seen.append((lcfg.noisy_ce_weight, lcfg.clean_ce_weight))
        return orig(em, lcfg, x, y, gen, shard=shard, **kw)

    monkeypatch.setattr(losses, "egc_loss", spy)  # the egc kind looks its loss up when the trainer asks
    over = ["train.sample_n=0", "train.steps=5", "loss.noisy_ce_weight=0.1", "loss.clean_ce_weight=0.02",
            "loss.ce_boost=5", "loss.ce_boost_steps=4"]
    train(load_config(None, tiny_overrides + over), tmp_path / "r", quiet=True)
    assert [w for pair in seen for w in pair] == pytest.approx([0.5, 0.1, 0.4, 0.08, 0.3, 0.06, 0.2, 0.04, 0.1, 0.02])

"""The shipped recipes in configs/: every file loads and validates, and the two-stage zoo:cifar10 recipe
stays the CIFAR-10 default recipe plus only the changes its comments give (latent, no patch stem,
clean-CE shifts), so a drift in one file shows here."""

from __future__ import annotations

from pathlib import Path

import pytest

from egc.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.to_dict()["data"]["name"]


def test_cifar10_latent_recipe_is_the_default_recipe_on_the_8x8x8_autoencoder():
    ae = load_config(CONFIGS / "cifar10-ae.yaml")
    assert ae.model.kind == "autoencoder" and (ae.model.ae.downsample, ae.model.ae.latent_channels) == (4, 8)
    lat = load_config(CONFIGS / "cifar10-latent.yaml").to_dict()
    base = load_config(CONFIGS / "cifar10.yaml").to_dict()
    diff = {(sec, k): v for sec in lat for k, v in lat[sec].items() if base[sec].get(k) != v}
    # sigma_data 0 means "automatic": 1.0 for the unit-variance latents, 0.5 for pixels
    # sample.eta -1 likewise: 0 for a latent model (zoo:cifar10's card: its lower fd), 1 for pixels
    assert diff == {("model", "patch"): 1, ("model", "autoencoder"): "runs/cifar10-ae", ("loss", "clean_shift"): 4,
                    ("model", "sigma_data"): 1.0, ("sample", "eta"): 0.0}

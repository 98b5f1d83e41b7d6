"""Inference runs where the model lives: every tensor of the sampling, scoring and classification
paths is created on the model's device. Proved without a GPU on the meta device: a tensor left on
the CPU next to a meta tensor fails the operation, and a meta tensor has no values to copy back."""

from __future__ import annotations

import pytest
import torch

from egc.config import load_config
from egc.diffusion.samplers import SAMPLERS, run_sampler
from egc.errors import EgcError
from egc.device import resolve_device
from egc.model import EGC
from egc.nets import build_net


def _meta_model(cond: str, kind: str = "egc") -> EGC:
    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "model.energy_prior=denoiser",
                             f"model.kind={kind}", f"model.conditioning={cond}"])
    return EGC(build_net(cfg.model), cfg, None, "fp32").to("meta")


@pytest.mark.parametrize("kind,cond", [("egc", "none"), ("egc", "joint"), ("egc", "embedding"), ("ddpm", "embedding")])
def test_every_sampler_runs_on_the_models_device(kind, cond):
    m = _meta_model(cond, kind)
    assert m.device.type == "meta"
    x = torch.randn(2, 1, 8, 8, device="meta")
    y = torch.tensor([0, 2])
    for name in SAMPLERS:
        out = run_sampler(name, lambda z, t: m.eps(z, t, y, 2.0, 1.0), x, m.schedule.alphas_cumprod, 3,
                          eta=1.0 if name == "ddim" else None, gen=torch.Generator().manual_seed(0))
        assert out.device.type == "meta" and out.shape == x.shape, name


def test_sample_score_energy_and_logits_stay_on_the_device(monkeypatch):
    m = _meta_model("joint")
    x = torch.randn(2, 1, 8, 8)  # given on the CPU: moved to the model
    assert m.score(x, 10, torch.tensor([1, 2]), 1.0, 1.0).device.type == "meta"
    assert m.energy(x, 10).device.type == "meta" and m.logits(x).device.type == "meta"
    # EGC.sample hands images back on the CPU; on meta there is nothing to copy, so stop right there.
    seen = []
    real_cpu = torch.Tensor.cpu

    def cpu(self, *a, **k):
        if self.device.type == "meta":
            seen.append(self.shape)
            return self
        return real_cpu(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    imgs, labels = m.sample(3, class_balanced=True, steps=2, sampler="ddim", eta=1.0)
    assert seen and imgs.shape == (3, 1, 8, 8) and labels.tolist() == [0, 1, 2]


def test_device_names_resolve_or_fail_in_one_line():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EgcError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(EgcError, match="device must be"):
        resolve_device("tpu")


def test_recorded_cpu_names_its_instruction_set_tier(monkeypatch):
    from egc import host

    for flags, tier in [({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AMX"), ({"avx2", "avx512f", "avx512_bf16"}, "AVX512-BF16"),
                        ({"avx2", "avx512f"}, "AVX512"), ({"avx2", "fma"}, "AVX2"), (set(), "other")]:
        monkeypatch.setattr(host, "_cpuinfo", lambda f=flags: ("AMD EPYC", f))
        assert host.cpu_tier() == tier and host.cpu_name() == f"AMD EPYC [{tier}]"

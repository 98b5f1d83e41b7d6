"""Every benchmark script in bench/ runs end to end on a tiny configuration and prints the JSON it
promises; and the project's fast training path gives the reference path's loss and gradients.

The benchmarks themselves are not tests (they are quoted in BENCHMARKS.md); this only keeps them from
rotting. Each runs in a subprocess with one thread, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egc.cli import main

from .conftest import make_npz, tiny_train_argv

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _bench(script: str, *args: str, timeout: int = 240) -> list[dict]:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, r.stdout
    return lines


@pytest.fixture(scope="module")
def run28(tmp_path_factory) -> Path:
    """A tiny 28x28 grey EGC run (the shape the shipped judge zoo:fashioncnn takes), 2 steps."""
    d = tmp_path_factory.mktemp("bench")
    npz = make_npz(d / "tiny28.npz", size=28)
    run = d / "run"
    assert main(tiny_train_argv(run, npz, 2)) == 0
    return run


def test_train_step_bench():
    out = _bench("train_step.py", "--size", "tiny", "--batch", "4", "--image", "8", "--steps", "1", "--warmup", "0", "--threads", "1",
                 "--modes", "released,reference,default-fp32,default")[-1]
    assert out["benchmark"] == "train_step"
    for mode in ("released", "reference", "default-fp32", "default"):
        assert out[mode]["s_per_step"] > 0 and out[mode]["peak_rss_mb"] > 0
    assert out["speedup_vs_first"]["released"] == 1.0
    d = out["default"]
    # Forward convolutions, the input gradient's and the weight gradients' all counted; a 2-image
    # step of this net is far from zero work and the share of a measured peak is a fraction.
    assert d["flops_by_op"]["convolution"] > 0 and d["flops_by_op"]["convolution_backward"] > d["flops_by_op"]["convolution"]
    assert d["flops_per_step"] == sum(d["flops_by_op"].values()) and 0 < d["share_of_peak"] < 1
    assert 0 < d["conv_time_share"] < 1 and d["conv_gflops"] > 0
    assert out["ceiling_vs_reference"] > 0
    # The reference is counted against the fp32 peak, the bf16 default also against fp32's (the bound
    # a dtype change sets at equal FLOPs), and the CPU features that decide it are recorded.
    r = out["reference"]
    assert r["peak_dtype"] == "float32" and r["flops_per_step"] > 0 and 0 < r["share_of_peak"] < 1 and "dtype_peak_ratio" not in r
    assert d["peak_dtype"] == "bfloat16" and d["matmul_peak_fp32_gflops"] > 0 and d["dtype_peak_ratio"] > 0
    assert set(out["cpu"]) == {"avx512_bf16", "amx_tile"} and all(isinstance(v, bool) for v in out["cpu"].values())


def test_sample_and_quick_eval_benches(run28):
    rows = _bench("sample.py", str(run28), "--n", "4", "--configs", "ddim:2,dpm++2m:2,ddim:2:0.5:7", "--threads", "1",
                  "--precisions", "fp32,bf16")
    per = [r for r in rows if "sampler" in r]
    assert [(r["sampler"], r["steps"], r["eta"], r["precision"]) for r in per] == [
        (s, n, e, p) for s, n, e in [("ddim", 2, 0.0), ("dpm++2m", 2, 0.0), ("ddim", 2, 0.5)] for p in ("fp32", "bf16")]
    assert per[4]["guidance"] == 7.0 and per[0]["guidance"] != 7.0
    assert all(k.endswith("_fashioncnn") for r in per for k in r if k.startswith(("fd_", "cond_acc_")))
    q = _bench("quick_eval.py", str(run28), "--n", "4", "--steps", "2", "--test-n", "20")[-1]
    assert 0 <= q["test_acc"] <= 1 and "fd_fashioncnn" in q


def test_eps_by_t_and_denormal_benches(run28):
    rows = _bench("eps_by_t.py", str(run28), "--n", "4", "--ts", "1,500")
    assert len(rows) >= 1
    d = _bench("denormal.py", str(run28), "--batch", "2", "--reps", "1")[-1]
    assert d["trained_noflush_s"] > 0 and d["trained_flush_s"] > 0 and d["trained_speedup_from_flush"] > 0


def test_cag_bench_smoke(run28):
    rows = _bench("cag.py", "--smoke", "--skip-imagenet", "--fashion-egc", f"egc:{run28}")
    assert {r.get("config") for r in rows if r.get("variant") == "fashion"} >= {"full", "plain"}, rows
    assert rows[-1].get("done") is True


def test_ddp_throughput_bench():
    out = _bench("ddp_throughput.py", "--size", "tiny", "--batch", "8", "--steps", "4", "--warmup", "2", "--image", "8", "--n", "64",
                 "--precision", "fp32", timeout=300)[-1]
    assert out["speedup_2x1_over_1x2"] > 0


def test_train_feature_classifier_bench(tmp_path):
    npz = make_npz(tmp_path / "d.npz", size=28, n=64)
    _bench("train_feature_classifier.py", "--data", f"npz:{npz}", "--epochs", "1", "--limit", "64", "--width", "8", "--out", str(tmp_path / "j.safetensors"))
    assert (tmp_path / "j.safetensors").is_file()


def test_fast_path_matches_reference_loss_and_gradients():
    """The default training path (bf16 autocast, channels_last) against the reference (fp32,
    contiguous) on one tiny model and batch: loss within 2 % and gradient cosine > 0.99 for bf16;
    channels_last alone agrees to float rounding."""
    from egc.config import load_config
    from egc.diffusion.energy import _eps_and_logits_func
    from egc.diffusion.losses import egc_loss
    from egc.diffusion.schedule import Schedule
    from egc.nets import build_net

    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3", "model.energy_prior=denoiser"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.05)  # a non-flat energy, as after training
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.arange(8) % 3
    sched = Schedule.make(cfg.diffusion.schedule)

    def run(precision: str, channels_last: bool, eps_fn=None):
        net.zero_grad(set_to_none=True)
        m = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        with ctx:
            parts = egc_loss(m, cfg.model, cfg.loss, sched, xx, y, torch.Generator().manual_seed(2), eps_fn=eps_fn)
        parts.total.backward()
        g = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        return float(parts.total.detach()), g

    ref_loss, ref_g = run("fp32", False)
    # torch.func.grad form (what train.compile traces): the same numbers to float rounding.
    fn_loss, fn_g = run("fp32", False, eps_fn=_eps_and_logits_func)
    assert abs(fn_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    torch.testing.assert_close(fn_g, ref_g, rtol=1e-4, atol=1e-6)
    cl_loss, cl_g = run("fp32", True)
    bf_loss, bf_g = run("bf16", True)
    assert abs(cl_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    torch.testing.assert_close(cl_g, ref_g, rtol=1e-4, atol=1e-5)
    assert abs(bf_loss - ref_loss) <= 0.02 * abs(ref_loss), (bf_loss, ref_loss)
    cos = torch.nn.functional.cosine_similarity(bf_g, ref_g, dim=0)
    assert cos > 0.99, float(cos)


def test_compiled_eps_falls_back_to_eager_with_one_message(capsys):
    """A torch.compile failure (here a backend that raises) costs one stderr line, not the run, and
    the fallback returns the eager input gradient."""
    from egc.config import load_config
    from egc.diffusion.energy import CompiledEps, eps_and_logits
    from egc.nets import build_net

    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    x, t, abar = torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), torch.tensor([0.9, 0.3])
    fn = CompiledEps()

    def broken(*a):
        raise RuntimeError("no C compiler\nmore detail")

    fn._fn = broken
    for _ in range(2):
        eps, logits, energy = fn(net, cfg.model, x, t, abar)
    ref = eps_and_logits(net, cfg.model, x, t, abar)
    torch.testing.assert_close(eps, ref[0])
    torch.testing.assert_close(logits, ref[1])
    assert fn.error == "RuntimeError: no C compiler"
    assert capsys.readouterr().err.count("torch.compile failed") == 1


def test_compile_refuses_other_kinds(tmp_path, capsys):
    npz = make_npz(tmp_path / "d.npz")
    assert main(tiny_train_argv(tmp_path / "run", npz, 1, "--model", "classifier", "--set", "train.compile=true")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.compile applies to model.kind egc" in err[0], err


def test_train_equal_steps_bench(tmp_path):
    from .conftest import TINY

    npz = make_npz(tmp_path / "d.npz")
    args = ["--config", str(ROOT / "configs" / "fashion-mnist.yaml"), "--data", f"npz:{npz}", "--steps", "3", "--window", "2",
            "--modes", "reference,default", "--out", str(tmp_path / "runs")]
    for s in TINY:
        args += ["--set", s]
    out = _bench("train_equal_steps.py", *args)[-1]
    assert out["reference"]["final_step"] == out["default"]["final_step"] == 3
    assert out["reference"]["overrides"] and out["default"]["overrides"] == []
    d = out["differences"]["default_vs_reference"]
    assert d["speedup"] > 0 and "mse" in d and "clean_ce" in d
    # one checkpoint per run (at the end), not one per step
    assert len(list((tmp_path / "runs" / "reference" / "checkpoints").glob("step-*.safetensors"))) == 1


def test_train_equal_steps_compares_existing_logs_over_a_step_range(tmp_path):
    """--runs: no training; only the rows inside --step-range are averaged, lr comes along (a run
    annealed by the clock may have a lower lr at equal steps), and a bad range or run is one line."""
    head = "step,total,mse,noisy_ce,clean_ce,noisy_acc,clean_acc,lr,grad_norm,img_per_s,elapsed_s\n"
    for name, mse in (("a", 0.1), ("b", 0.3)):
        (tmp_path / name).mkdir()
        rows = [f"{s},1.0,{mse + (s % 40) / 1000},0.5,0.4,0.5,0.6,{1e-3 if s < 100 else 1e-4},1.0,100,{s / 10}" for s in range(20, 201, 20)]
        (tmp_path / name / "log.csv").write_text(head + "\n".join(rows) + "\n")
    out = _bench("train_equal_steps.py", "--runs", f"a={tmp_path / 'a'},b={tmp_path / 'b'}", "--step-range", "40:80")[-1]
    assert out["a"]["rows_averaged"] == out["b"]["rows_averaged"] == 3  # steps 40, 60, 80
    assert abs(out["a"]["mse"]["mean"] - (0.1 + (0 + 20 + 0) / 3000)) < 1e-9 and out["a"]["lr"]["mean"] == 1e-3
    assert abs(out["differences"]["b_vs_a"]["mse"]["delta"] - 0.2) < 1e-9 and out["differences"]["b_vs_a"]["speedup"] == 1.0
    for bad, msg in ((["--step-range", "40"], "--step-range: '40' is not LO:HI"), ([], "is not NAME=RUN_DIR with a log.csv")):
        runs = f"a={tmp_path / 'a'}" if bad else f"a={tmp_path / 'nowhere'}"
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "train_equal_steps.py"), "--runs", runs, *bad], capture_output=True, text=True, env=ENV, cwd=ROOT)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr

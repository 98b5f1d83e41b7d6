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
from egc.config import load_config

from .conftest import TINY_AE, make_npz, tiny_train_argv

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


def test_step_cost_bench_smoke():
    """bench/step_cost.py: every row's phases are timed and each step is a ratio to the DDPM's and the CNN's."""
    out = _bench("step_cost.py", "--smoke", "--threads", "1")[-1]
    assert out["size"] == "tiny" and set(out["rows"]) >= {"egc-unet", "egc-hybrid", "ddpm", "cnn"}
    for name, r in out["rows"].items():
        assert r["ms_per_step"] > 0 and r["params_M"] > 0
        assert ("input_grad" in r["ms"]) == name.startswith("egc"), (name, r["ms"])
        assert r["x_ddpm"] == pytest.approx(r["ms_per_step"] / out["rows"]["ddpm"]["ms_per_step"], abs=0.01)
    assert out["rows"]["cnn"]["x_cnn"] == 1.0


def test_train_step_bench():
    out = _bench("train_step.py", "--size", "tiny", "--batch", "4", "--image", "8", "--steps", "1", "--warmup", "0", "--threads", "1",
                 "--peak-n", "256", "--modes", "released,reference,default-fp32,default")[-1]
    assert out["benchmark"] == "train_step"
    first = out["released"]
    for mode in ("released", "reference", "default-fp32", "default"):
        r = out[mode]
        # throughput and speed-up are the measured step time seen from the other side; max RSS is in
        # MB (ru_maxrss is KB on Linux): a process that imported torch holds 50 MB to a few GB
        assert r["images_per_s"] == pytest.approx(4 / r["s_per_step"], rel=1e-9)
        assert out["speedup_vs_first"][mode] == pytest.approx(first["s_per_step"] / r["s_per_step"], rel=1e-9)
        assert 50 < r["peak_rss_mb"] < 20000, r["peak_rss_mb"]
    assert out["speedup_vs_first"]["released"] == 1.0
    d = out["default"]
    # Forward convolutions, the input gradient's and the weight gradients' all counted; a 2-image
    # step of this net is far from zero work and the share of a measured peak is a fraction.
    assert d["flops_by_op"]["convolution"] > 0 and d["flops_by_op"]["convolution_backward"] > d["flops_by_op"]["convolution"]
    assert d["flops_per_step"] == sum(d["flops_by_op"].values()) and 0 < d["share_of_peak"] < 1
    assert 0 < d["conv_time_share"] < 1 and d["conv_gflops"] > 0
    # achieved = counted FLOPs / measured step time, share = achieved / peak, and the ceiling is the
    # reference's step time over the default's FLOPs at that peak: each recomputed from its parts
    for r in (d, out["reference"]):
        assert r["achieved_gflops"] == pytest.approx(r["flops_per_step"] / r["s_per_step"] / 1e9, rel=1e-9)
        assert r["share_of_peak"] == pytest.approx(r["achieved_gflops"] / r["matmul_peak_gflops"], rel=1e-9)
    ceiling = out["reference"]["s_per_step"] / (d["flops_per_step"] / (d["matmul_peak_gflops"] * 1e9))
    assert out["ceiling_vs_reference"] == pytest.approx(ceiling, rel=1e-9)
    # The reference is counted against the fp32 peak, the bf16 default also against fp32's (the bound
    # a dtype change sets at equal FLOPs), and the CPU features that decide it are recorded.
    r = out["reference"]
    assert r["peak_dtype"] == "float32" and r["flops_per_step"] > 0 and 0 < r["share_of_peak"] < 1 and "dtype_peak_ratio" not in r
    # "default" runs train.precision auto: bf16 exactly where this CPU multiplies bf16 natively.
    from egc.device import native_bf16

    if native_bf16():
        assert d["peak_dtype"] == "bfloat16" and d["matmul_peak_fp32_gflops"] > 0 and d["dtype_peak_ratio"] > 0
    else:
        assert d["peak_dtype"] == "float32" and "dtype_peak_ratio" not in d
    assert set(out["cpu"]) == {"avx512_bf16", "amx_tile"} and all(isinstance(v, bool) for v in out["cpu"].values())


def test_sample_and_quick_eval_benches(run28):
    rows = _bench("sample.py", str(run28), "--n", "4", "--configs", "ddim:2,dpm++2m:2,ddim:2:0.5:7:0:0.2-0.6", "--threads", "1",
                  "--precisions", "fp32,bf16", "--judge", "zoo:fashioncnn")
    per = [r for r in rows if "sampler" in r]
    assert [(r["sampler"], r["steps"], r["eta"], r["precision"]) for r in per] == [
        (s, n, e, p) for s, n, e in [("ddim", 2, 0.0), ("dpm++2m", 2, 0.0), ("ddim", 2, 0.5)] for p in ("fp32", "bf16")]
    assert per[4]["guidance"] == 7.0 and per[0]["guidance"] != 7.0
    assert per[4]["guidance_interval"] == [0.2, 0.6] and per[0]["guidance_interval"] == [0.0, 0.6]  # the EGC's own default
    assert all(k.endswith("_fashioncnn") for r in per for k in r if k.startswith(("fd_", "cond_acc_")))
    q = _bench("quick_eval.py", str(run28), "--n", "4", "--steps", "2", "--test-n", "20")[-1]
    assert "fd_fashioncnn" in q and q["n"] == 4 and (q["steps"], q["sampler"]) == (2, "ddim")
    # test_acc: the model's clean accuracy on the first 20 test images, recomputed here
    from egc import EGC
    from egc.data import load_dataset, to_model_range

    m = EGC.load(str(run28))
    test = load_dataset(m.config.data.name, "test", m.config.data.root)
    with torch.no_grad():
        pred = m.logits(to_model_range(test.images[:20])).argmax(1)
    assert q["test_acc"] == pytest.approx(float((pred == test.labels[:20]).float().mean()), abs=1e-6)


def test_eps_by_t_and_denormal_benches(run28):
    rows = _bench("eps_by_t.py", str(run28), "--n", "4", "--ts", "1,500")
    doc = rows[-1]
    assert doc["benchmark"] == "eps_by_t" and doc["n"] == 4 and list(doc["by_t"]) == ["1", "500"]  # the asked t, in order
    # Every number recomputed from its definition: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps with eps
    # drawn per t (in order) from a generator seeded with --seed 0; eps-MSE of the model and of the
    # Gaussian-data optimum sqrt(1 - abar) x_t / (abar var(x0) + 1 - abar); accuracy of m.logits(x_t, t).
    from egc import EGC
    from egc.data import load_dataset, to_model_range

    m = EGC.load(str(run28))
    test = load_dataset(m.config.data.name, "test", m.config.data.root)
    x0, y = to_model_range(test.images[:4]), test.labels[:4]
    g = torch.Generator().manual_seed(0)
    for t in (1, 500):
        eps = torch.randn(x0.shape, generator=g)
        ab = m.schedule.abar(torch.tensor([t]))[0]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        base = (1 - ab).sqrt() * xt / (ab * x0.var() + 1 - ab)
        row = doc["by_t"][str(t)]
        assert row["mse"] == pytest.approx(float((m.eps(xt, t) - eps).pow(2).mean()), abs=2e-4), (t, row)
        assert row["mse_gaussian_baseline"] == pytest.approx(float((base - eps).pow(2).mean()), abs=2e-4), (t, row)
        assert row["acc"] == pytest.approx(float((m.logits(xt, t).argmax(1) == y).float().mean()), abs=2e-4), (t, row)
        # the denoiser channels' first-order eps (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar), written out
        assert m.config.model.energy_prior == "denoiser"
        r = m.energy_model.fmap(xt, torch.full((4,), t))[:, m.config.model.num_classes:].detach()
        sd = m.config.model.sigma_data
        d = 1 - ab + ab * sd**2
        x0_hat = ab.sqrt() * sd**2 / d * xt + sd * (1 - ab).sqrt() / d.sqrt() * r
        e1 = (xt - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
        assert row["mse_first_order"] == pytest.approx(float((e1 - eps).pow(2).mean()), abs=2e-4), (t, row)
    # near t = 1 the optimum predicts ~0 noise from an almost clean image: its MSE is E[eps^2] ~ 1
    assert abs(doc["by_t"]["1"]["mse_gaussian_baseline"] - 1) < 0.1
    d = _bench("denormal.py", str(run28), "--batch", "2", "--reps", "1")[-1]
    assert d["step"] == 2 and d["batch"] == 2
    assert all(d[f"{w}_{f}_s"] > 0 for w in ("trained", "fresh") for f in ("flush", "noflush"))
    # the speed-up is the quotient of the two reported (rounded) times
    assert d["trained_speedup_from_flush"] == round(d["trained_noflush_s"] / d["trained_flush_s"], 3)


def test_cag_bench_smoke(run28):
    rows = _bench("cag.py", "--smoke", "--skip-imagenet", "--fashion-egc", f"egc:{run28}")
    assert {r.get("config") for r in rows if r.get("variant") == "fashion"} >= {"full", "plain"}, rows
    assert rows[-1].get("done") is True


def test_cag_scoreboard_rows_controls_and_table(tmp_path):
    """bench/cag_scoreboard.py on a tiny folder: a noise-trained CNN trained here generates, rows scored
    with the network-free statistics; each --setting belongs to the --generator before it."""
    npz = make_npz(tmp_path / "d.npz", size=16, n=60, classes=3)
    cnn = tmp_path / "g.safetensors"
    _bench("train_feature_classifier.py", "--data", f"npz:{npz}", "--epochs", "1", "--width", "4", "--out", str(cnn), "--noise-sigma", "0.25",
           "--role", "test generator")
    out = tmp_path / "board"
    rows = _bench("cag_scoreboard.py", "--data", f"npz:{npz}", "--stats-from", f"npz:{npz}", "--stats-per-class", "10", "--n-per-class", "3",
                  "--controls", "real,seeds", "--generator", f"a={cnn}", "--setting", "plain:steps=2,real_stats=False",
                  "--setting", "seeded:steps=2,init=data,noise=0.2", "--generator", f"b={cnn}", "--setting", "only:steps=1",
                  "--out", str(out), "--threads", "1")
    assert [(r["generator"], r["setting"]) for r in rows][2:] == [("a", "plain"), ("a", "seeded"), ("b", "only")]
    assert rows[0]["naturalness"]["diversity_ratio"] > 0.5 and all(r["n"] == 9 for r in rows)
    assert rows[2]["feature_stats"] is False and rows[3]["feature_stats"] is True and rows[3]["config"]["init"] == "data"
    assert (out / "a-seeded.npz").is_file() and (out / "control-seeds.png").is_file()
    (out / "rows.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "cag_table.py"), str(out / "rows.jsonl")], capture_output=True, text=True).stdout
    assert table.count("\n") == 2 + len(rows) and "| a | seeded | 9 |" in table and "no judge" in table


def test_ddp_throughput_bench():
    out = _bench("ddp_throughput.py", "--size", "tiny", "--batch", "8", "--steps", "4", "--warmup", "2", "--image", "8", "--n", "64",
                 "--precision", "fp32", timeout=300)[-1]
    one, two = out["one_process_two_threads"], out["two_processes_one_thread"]
    assert (one["processes"], one["threads_per_process"], two["processes"], two["threads_per_process"]) == (1, 2, 2, 1)
    # 4 steps logged every 2: the first window is warm-up, the second (2 steps) is timed
    assert one["timed_steps"] == two["timed_steps"] == 2 and out["global_batch"] == 8
    assert one["img_per_s"] > 0 and two["img_per_s"] > 0
    assert out["speedup_2x1_over_1x2"] == round(two["img_per_s"] / one["img_per_s"], 3)


def test_train_feature_classifier_bench(tmp_path):
    npz = make_npz(tmp_path / "d.npz", size=28, n=64)
    _bench("train_feature_classifier.py", "--data", f"npz:{npz}", "--epochs", "1", "--limit", "64", "--width", "8", "--out", str(tmp_path / "j.safetensors"),
           "--hflip", "--pad", "reflect", "--max-shift", "3")
    assert (tmp_path / "j.safetensors").is_file()


def test_fast_path_matches_reference_loss_and_gradients():
    """The fast training path (bf16 autocast, channels_last) against the reference (fp32,
    contiguous) on one tiny model and batch: loss within 2 % and a bf16 gradient closer to the fp32
    one than another noise draw's fp32 gradient is; channels_last alone agrees to float rounding."""
    from egc.config import load_config
    from egc.diffusion.energy import EnergyModel, _eps_and_logits_func
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

    def run(precision: str, channels_last: bool, eps_fn=None, seed: int = 2):
        net.zero_grad(set_to_none=True)
        m = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        with ctx:
            parts = egc_loss(EnergyModel(m, cfg.model, sched), cfg.loss, xx, y, torch.Generator().manual_seed(seed), eps_fn=eps_fn)
        parts.total.backward()
        g = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        return float(parts.total.detach()), g

    ref_loss, ref_g = run("fp32", False)

    def run_seed(seed: int) -> torch.Tensor:
        return run("fp32", False, seed=seed)[1]
    # torch.func.grad form (what train.compile traces): the same numbers to float rounding.
    fn_loss, fn_g = run("fp32", False, eps_fn=_eps_and_logits_func)
    assert abs(fn_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    torch.testing.assert_close(fn_g, ref_g, rtol=1e-4, atol=1e-6)
    cl_loss, cl_g = run("fp32", True)
    bf_loss, bf_g = run("bf16", True)
    assert abs(cl_loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    torch.testing.assert_close(cl_g, ref_g, rtol=1e-4, atol=1e-5)
    assert abs(bf_loss - ref_loss) <= 0.02 * abs(ref_loss), (bf_loss, ref_loss)
    # bf16 rounding differs between CPU kinds (emulated on AVX2: relative error ~0.004; AVX-512 BF16;
    # AMX: ~0.14, cosine 0.9898 on a Sapphire Rapids host), so no single host's number is the bound.
    # The scale that matters for training is the gradient's own noise: the same batch with another
    # draw of (t, eps) moves the fp32 gradient by a relative 0.12-0.37 here. bf16 must move it less
    # than the median such draw; a wrong or missing term moves it by ~1.
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).norm() / b.norm())

    draws = sorted(rel(run_seed(s), ref_g) for s in (3, 4, 5))
    err = rel(bf_g, ref_g)
    assert err < draws[1], (err, draws)


def test_compiled_eps_falls_back_to_eager_with_one_message(capsys):
    """A torch.compile failure (here a backend that raises) costs one stderr line, not the run, and
    the fallback returns the eager input gradient."""
    from egc.config import load_config
    from egc.diffusion.energy import CompiledEps, EnergyModel
    from egc.diffusion.schedule import Schedule
    from egc.nets import build_net

    cfg = load_config(None, ["model.size=tiny", "model.image_size=8", "model.num_classes=3"])
    torch.manual_seed(0)
    net = build_net(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 500])
    em = EnergyModel(net, cfg.model, Schedule.make(cfg.diffusion.schedule, cfg.diffusion.steps))
    fn = CompiledEps()

    def broken(*a):
        raise RuntimeError("no C compiler\nmore detail")

    fn._fn = broken
    for _ in range(2):
        eps, logits, energy = fn(em, x, t)
    ref = em.eps_and_logits(x, t)
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
    assert "mse" in d and "clean_ce" in d
    ref, dflt = out["reference"], out["default"]
    # each difference is recomputed from the two runs' own summaries
    assert ref["s_per_step"] > 0 and dflt["s_per_step"] > 0
    assert d["speedup"] == pytest.approx(ref["s_per_step"] / dflt["s_per_step"], rel=1e-12)
    for k in ("mse", "clean_ce"):
        assert ref[k]["mean"] == pytest.approx(sum(float(r[k]) for r in _log_rows(tmp_path / "runs" / "reference")[-2:]) / 2, rel=1e-9)
        assert d[k]["delta"] == pytest.approx(dflt[k]["mean"] - ref[k]["mean"], rel=1e-12, abs=1e-15)
    # one checkpoint per run (at the end), not one per step
    assert len(list((tmp_path / "runs" / "reference" / "checkpoints").glob("step-*.safetensors"))) == 1


def _log_rows(run: Path) -> list[dict]:
    import csv

    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


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


def test_make_font_digits_writes_a_loadable_ten_class_folder(tmp_path):
    import importlib.util

    from egc.data import load_dataset

    spec = importlib.util.spec_from_file_location("make_font_digits", ROOT / "bench" / "make_font_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not mod.find_fonts():
        pytest.skip("no TrueType fonts on this machine")
    _bench("make_font_digits.py", "--out", str(tmp_path / "a"), "--train-per-class", "2", "--test-per-class", "1")
    _bench("make_font_digits.py", "--out", str(tmp_path / "b"), "--train-per-class", "2", "--test-per-class", "1")
    ds = load_dataset(f"folder:{tmp_path / 'a'}", "train")
    assert tuple(ds.images.shape[1:]) in ((28, 28, 1), (1, 28, 28)) and ds.labels.tolist() == sorted(list(range(10)) * 2)
    assert list(ds.class_names) == [str(i) for i in range(10)]
    assert len(load_dataset(f"folder:{tmp_path / 'a'}", "test").labels) == 10
    # deterministic for a seed: the second tree is byte-identical
    for f in sorted((tmp_path / "a").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()


def test_make_examples_picks_the_first_test_images_of_each_class(tmp_path):
    import numpy as np

    npz = make_npz(tmp_path / "d.npz", size=28, n=40)
    out = tmp_path / "ex.npz"
    row = _bench("make_examples.py", f"npz:{npz}", "--per-class", "2", "--out", str(out))[-1]
    with np.load(npz) as src, np.load(out) as ex:
        k = int(src["labels"].max()) + 1
        want = np.concatenate([np.flatnonzero(src["labels"] == c)[:2] for c in range(k)])
        assert row["n"] == 2 * k and ex["labels"].tolist() == src["labels"][want].tolist()
        assert np.array_equal(ex["images"], src["images"][want]) and len(ex["class_names"]) == k


def test_gen_table_picks_by_the_stated_rule_and_blanks_guidance_of_unconditional_rows(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_table", ROOT / "bench" / "gen_table.py")
    gt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gt)

    def row(s, w, fd, cond=None, n=500):
        r = {"benchmark": "sample", "sampler": "ddim", "steps": 20, "eta": 1.0, "guidance": s, "cfg": w, "n": n, "cpu": "test cpu",
             "fd_judge": fd, "kid_judge": 0.1, "precision_judge": 0.5, "recall_judge": 0.4}
        if cond is not None:
            r["cond_acc_judge"] = cond
        return json.dumps(r)

    for m, sweep in (("cond", [row(0, 0, 9.0, 0.50), row(100, 0, 8.0, 0.95), row(30, 0, 7.0, 0.86), row(300, 0, 6.0, 0.80)]),
                     ("unsup", [row(100, 1, 5.0)])):
        (tmp_path / m).mkdir()
        (tmp_path / m / "config.yaml").write_text("train:\n  batch_size: 32\n")
        (tmp_path / f"{m}.train.json").write_text(json.dumps({"step": 100, "elapsed_s": 50.0}))
        (tmp_path / f"{m}.sweep.jsonl").write_text("\n".join(sweep) + "\n")
    # the lowest fd among rows with cond. acc >= 0.9 x the best (0.95 -> >= 0.855): s 30, not s 300
    # the interval is always written: without it bench/sample.py would take the model's own (t/T <= 0.6)
    assert gt.setting(gt.pick(gt._rows(tmp_path / "cond.sweep.jsonl"))) == "ddim:20:1:30:0:0-1"
    assert gt.setting({**json.loads(row(30, 0, 7.0)), "guidance_interval": [0.0, 0.6]}) == "ddim:20:1:30:0:0-0.6"
    lines = gt.table(tmp_path).splitlines()
    cond = [ln for ln in lines if "| 30 | 0 |" in ln]
    assert len(cond) == 1 and "**0.86**" in cond[0] and "**7.0**" in cond[0]
    unsup = next(ln for ln in lines if ln.startswith("| unsup |"))
    assert "| 64 |" in unsup  # img/s = 100 steps x batch 32 (the run's own config) / 50 s
    assert "| 500 | - | - | - |" in unsup  # no class was asked: the stored s 100, w 1 did not act
    # later files: M.extra*.jsonl join the sweep (and its pick), M.final*.jsonl are the final rows; the bold
    # final row is chosen by the same rule
    (tmp_path / "cond.extra.jsonl").write_text(row(10, 0, 6.5, 0.94) + "\n")
    assert gt.setting(gt.pick(gt._files(tmp_path, "cond", "sweep"))) == "ddim:20:1:10:0:0-1"
    (tmp_path / "cond.final.jsonl").write_text(row(10, 0, 6.0, 0.95, n=1000) + "\n")
    (tmp_path / "cond.final2.jsonl").write_text(row(30, 0, 5.0, 0.70, n=1000) + "\n" + row(100, 0, 5.5, 0.96, n=1000) + "\n")
    lines = gt.table(tmp_path).splitlines()
    finals = [ln for ln in lines if "| 1000 |" in ln]
    assert len(finals) == 3 and [("**" in ln) for ln in finals] == [False, False, True]  # 5.0 fails the accuracy rule
    assert any("| 10 | 0 |" in ln and "| 500 |" in ln for ln in lines)  # the extra row is in the table


def test_sample_bench_takes_the_data_sets_judge_or_asks_for_one(run28):
    """No --judge: the data set's shipped judge; a data set without one (this npz run) gets a one-line refusal."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "sample.py"), str(run28), "--n", "2", "--configs", "ddim:2", "--threads", "1"],
                       capture_output=True, text=True, env=ENV, timeout=240, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--judge" in r.stderr.strip().splitlines()[-1]
    from egc.eval.evaluate import DEFAULT_JUDGES
    from egc.eval.judge import load_judge

    for data, shape in (("fashion-mnist", [1, 28, 28]), ("cifar10", [3, 32, 32])):
        j = load_judge(DEFAULT_JUDGES[data])  # shipped in the package, never downloaded
        assert j.meta["dataset"] == data and j.meta["image_shape"] == shape and j.meta["test_accuracy"] >= 0.8


def test_zoo_release_script_sweeps_exports_the_pick_and_judges_it(run28, tmp_path):
    """bench/zoo_release.sh on a tiny run: the exported file carries the picked setting as its default."""
    from egc import EGC

    env = {**ENV, "BIN": str(Path(sys.executable).parent), "N_SWEEP": "4", "N_FINAL": "4", "JUDGE": "zoo:fashioncnn",
           "SWEEP": "ddim:2:1:3:0:0-0.6,ddim:2:1:7:0:0-1", "THREADS": "1", "EVAL_FLAGS": "--metrics acc,ece --n-test 8", "HALF": "1"}
    out = tmp_path / "rel"
    r = subprocess.run(["bash", str(ROOT / "bench" / "zoo_release.sh"), str(run28), str(out), "tiny"], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = [json.loads(ln) for ln in (out / "tiny.sweep.jsonl").read_text().splitlines() if '"sampler"' in ln]
    assert [(s["guidance"], s["guidance_interval"]) for s in sweep] == [(3.0, [0.0, 0.6]), (7.0, [0.0, 1.0])]
    picked = min((s for s in sweep if s["cond_acc_fashioncnn"] >= 0.9 * max(x["cond_acc_fashioncnn"] for x in sweep)),
                 key=lambda s: s["fd_fashioncnn"])
    m = EGC.load(str(out / "tiny.safetensors"))
    from safetensors import safe_open

    with safe_open(str(out / "tiny.safetensors"), framework="pt") as f:  # HALF=1: the network in float16
        assert {f.get_slice(k).get_dtype() for k in f.keys() if k.startswith("ema.")} == {"F16"}
    assert (m.config.sample.guidance, [m.config.sample.guidance_tmin, m.config.sample.guidance_tmax]) == \
        (picked["guidance"], picked["guidance_interval"])
    final = [json.loads(ln) for ln in (out / "tiny.final.jsonl").read_text().splitlines() if '"sampler"' in ln]
    assert [(f["steps"], f["eta"], f["n"]) for f in final] == [(50, 1.0, 4), (50, 0.0, 4)]
    assert "accuracy" in json.loads((out / "tiny.eval.json").read_text())["metrics"]
    assert "no demo grid" in r.stderr and not (out / "demo.json").exists()  # an npz run has no shipped demo images


def test_ae_floor_judges_real_images_and_their_reconstructions(tmp_path):
    """bench/ae_floor.py: a real row and a reconstructed row, judged alike; balanced rows per class."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from ae_floor import balanced_rows
    finally:
        sys.path.remove(str(ROOT / "bench"))
    labels = torch.tensor([0, 1, 2] * 5 + [0] * 10)
    rows = balanced_rows(labels, 7, seed=0)
    assert len(set(rows.tolist())) == 7 and torch.bincount(labels[rows]).tolist() == [3, 2, 2]
    npz = make_npz(tmp_path / "g28.npz", size=28)
    ae = tmp_path / "ae"
    argv = ["train", "--model", "autoencoder", "--out", str(ae), "--data", f"npz:{npz}", "--steps", "2", "--quiet"]
    for s in ["train.batch_size=8", "train.threads=1", "train.sample_n=3", *TINY_AE]:
        argv += ["--set", s]
    assert main(argv) == 0
    real, rec = _bench("ae_floor.py", str(ae), "--data", f"npz:{npz}", "--n", "12", "--judge", "zoo:fashioncnn", "--threads", "1")
    assert (real["images"], rec["images"]) == ("real", "reconstructed") and real["n"] == rec["n"] == 12
    assert "fd_fashioncnn" in real and "psnr_db" not in real
    # a 2-step autoencoder reconstructs badly: its images are farther from the test set than the real ones
    assert rec["fd_fashioncnn"] > real["fd_fashioncnn"]
    assert rec["psnr_db"] == pytest.approx(10 * torch.log10(torch.tensor(4.0 / rec["mse_minus1_1"])).item(), rel=1e-5)


def _stand_in_egc(tmp_path: Path) -> tuple[Path, Path]:
    """An `egc` that logs its arguments to calls.txt: train makes OUT/checkpoints, eval writes its --json."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "egc"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'case $1 in\n'
        '  train) out=""; while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done; mkdir -p "$out/checkpoints"; echo "{}" ;;\n'
        '  eval) while [ $# -gt 0 ]; do [ "$1" = --json ] && echo "{}" > "$2"; shift; done ;;\n'
        'esac\n')
    fake.chmod(0o755)
    return fake, calls


def test_compare_cifar10_resumes_a_killed_training_and_skips_finished_work(tmp_path):
    """The 45-minute table spans sessions: a model whose training was killed (checkpoints, an empty
    KIND.train.json) is resumed, never evaluated half-trained; a finished one is neither retrained nor
    re-evaluated. The trainer is a stand-in that logs its arguments (the real ones are tested elsewhere)."""
    fake, calls = _stand_in_egc(tmp_path)
    out = tmp_path / "t"
    (out / "egc" / "checkpoints").mkdir(parents=True)
    (out / "egc.train.json").write_text("")  # killed with its session
    (out / "classifier" / "checkpoints").mkdir(parents=True)
    (out / "classifier.train.json").write_text('{"step": 10}\n')  # finished
    (out / "classifier.json").write_text("{}")  # and evaluated
    r = subprocess.run(["bash", str(ROOT / "bench" / "compare_cifar10.sh"), "45", str(out)], capture_output=True, text=True,
                       env={**ENV, "EGC": str(fake), "LATENT_AE": "runs/ae"}, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    log = calls.read_text().splitlines()
    assert log[0] == f"train --out {out}/egc --resume --quiet"
    assert log[1].startswith("train --config configs/cifar10.yaml --model ddpm --set model.conditioning=embedding")
    assert "--set model.autoencoder=runs/ae --set model.patch=1 --minutes 45" in log[1]
    assert log[1].endswith(f"--out {out}/ddpm --quiet")
    evals = [c.split()[1] for c in log if c.startswith("eval")]
    assert evals == [f"{out}/egc", f"{out}/ddpm"] and log[-1].startswith("report")


def test_compare_fashion_shares_the_resume_rule(tmp_path):
    """compare_fashion.sh: same rule through bench/train_or_resume.sh (it used to evaluate any run with
    checkpoints, a killed one included)."""
    fake, calls = _stand_in_egc(tmp_path)
    out = tmp_path / "f"
    (out / "classifier" / "checkpoints").mkdir(parents=True)
    (out / "classifier.train.json").write_text("")  # killed with its session
    (out / "egc.json").write_text("{}")  # the EGC run's evaluation is done
    r = subprocess.run(["bash", str(ROOT / "bench" / "compare_fashion.sh"), "runs/egc", "30", str(out)], capture_output=True, text=True,
                       env={**ENV, "EGC": str(fake)}, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    log = calls.read_text().splitlines()
    assert log[0] == f"train --out {out}/classifier --resume --quiet"
    assert log[1] == f"train --config configs/fashion-mnist.yaml --model ddpm --minutes 30 --out {out}/ddpm --quiet"
    assert [c.split()[1] for c in log if c.startswith("eval")] == [f"{out}/classifier", f"{out}/ddpm"]


def test_cifar10_arch_trials_train_each_variant_in_zoo_form_with_a_valid_config(tmp_path):
    """bench/cifar10_arch_trials.sh: every variant is trained in zoo:cifar10's form plus its own change,
    each into its own folder, and every variant's settings make a valid config (the stand-in trainer and
    python log their arguments; the real ones are tested elsewhere). An unknown variant is one line."""
    fake, calls = _stand_in_egc(tmp_path)
    py = tmp_path / "python"
    py.write_text("#!/usr/bin/env bash\n"
                  f'echo "py $*" >> {calls}\n'
                  'case "$*" in *--pick*) echo ddim:20:1:0:1 ;; esac\n')
    py.chmod(0o755)
    out = tmp_path / "a"
    script = str(ROOT / "bench" / "cifar10_arch_trials.sh")
    r = subprocess.run(["bash", script, "3", str(out)], capture_output=True, text=True,
                       env={**ENV, "BIN": str(tmp_path)}, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    trains = [c.split() for c in calls.read_text().splitlines() if c.startswith("train")]
    variants = ["base", "lr2e-3", "ch64", "res1", "mult122"]
    assert [t[t.index("--out") + 1] for t in trains] == [f"{out}/{v}/egc-joint" for v in variants]
    nets = []
    for t in trains:
        assert t[t.index("--config") + 1] == "configs/cifar10.yaml" and t[t.index("--minutes") + 1] == "3"
        sets = [t[i + 1] for i, a in enumerate(t) if a == "--set"]
        assert {"model.autoencoder=zoo:cifar10", "model.patch=1", "loss.clean_shift=4"} <= set(sets)
        cfg = load_config(ROOT / "configs" / "cifar10.yaml", [s for s in sets if not s.startswith("model.autoencoder")])
        nets.append((cfg.model.channels, cfg.model.num_res_blocks, tuple(cfg.model.channel_mult), cfg.train.lr))
    assert nets == [(48, 2, (1, 2), 1e-3), (48, 2, (1, 2), 2e-3), (64, 2, (1, 2), 1e-3), (48, 1, (1, 2), 1e-3), (48, 2, (1, 2, 2), 1e-3)]
    # two changes at once
    r = subprocess.run(["bash", script, "3", str(out), "res1+lr2e-3"], capture_output=True, text=True,
                       env={**ENV, "BIN": str(tmp_path)}, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    last = [c for c in calls.read_text().splitlines() if c.startswith("train")][-1]
    assert f"--out {out}/res1+lr2e-3/egc-joint" in last and "--set model.num_res_blocks=1 --set train.lr=0.002" in last
    bad = subprocess.run(["bash", script, "3", str(out), "res1+huge"], capture_output=True, text=True,
                         env={**ENV, "BIN": str(tmp_path)}, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("cifar10_arch_trials.sh: unknown variant 'huge'")


@pytest.mark.slow
def test_comparison_table_reads_what_eval_certify_and_dc_write(tmp_path):
    """Issue 33's table is built from the JSON that egc eval, egc certify and bench/dc_accuracy.py really
    write (a tiny EGC run), so a renamed key shows up here, not after hours of training."""
    npz = make_npz(tmp_path / "t.npz", n=24)
    run = tmp_path / "cmp" / "egc"
    assert main(tiny_train_argv(run, npz, 2)) == 0
    assert main(["eval", str(run), "--metrics", "acc,ece,noisy_acc,robust", "--n-test", "12", "--noise-t", "500", "--n-robust", "4",
                 "--eps-l2", "0.5,1.5", "--no-sanity", "--pgd-steps", "2", "--json", str(run / "eval.json"), "--quiet"]) == 0
    assert main(["certify", str(run), "--sigma", "0.25", "--n-test", "3", "--n0", "5", "--n", "20", "--radii", "0.25,0.5",
                 "--json", str(run / "certify.json"), "--quiet"]) == 0
    (run / "dc-K_1.json").write_text(json.dumps(_bench("dc_accuracy.py", str(run), "--schedule", "K:1", "--n", "3")[-1]))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_table.py"), str(tmp_path / "cmp")], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    table = r.stdout
    ev, cert = json.loads((run / "eval.json").read_text()), json.loads((run / "certify.json").read_text())
    row = next(line for line in table.splitlines() if line.startswith("| egc | 2 |")).split(" | ")
    assert row[3] == f"{ev['metrics']['accuracy']:.3f}" and row[4] == f"{ev['metrics']['ece']:.3f}"
    l2, linf = ev['metrics']['robust']['l2'], ev['metrics']['robust']['linf']
    assert row[5] == f"{ev['metrics']['noisy_accuracy']['500']:.3f}" and row[8] == f"{l2['0.5']:.3f} / {l2['1.5']:.3f}"
    assert row[7] == f"{linf['0.05']:.3f} / {linf['0.1']:.3f}"  # eval's default L-inf budgets include both
    assert row[9] == "-"  # --no-sanity: no attack checks ran, and the table must not claim they passed
    ca = cert["certified_accuracy"]
    assert row[10] == f"{ca['0.25']:.3f} / {ca['0.5']:.3f}" and row[11] != "-"
    dc = next(line for line in table.splitlines() if line.startswith("| egc | K:1 |")).split(" | ")
    assert dc[2] == "3"  # one trial for each of the 3 classes

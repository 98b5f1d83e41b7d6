"""The Starlette app: the page, its assets, and a small JSON / event-stream API.

Routes (every error is JSON ``{"error": "one line"}`` with a 4xx status; an unexpected failure is a
500 with one line, its traceback goes to the server's console only):

- ``GET /``, ``GET /static/...``: the page (one HTML, one JS, one CSS; nothing from elsewhere).
- ``GET /api/info``: the models, CaG classifiers, samplers and limits.
- ``GET /api/health``: ``{"ok": true, "running": ..., "waiting": N}``.
- ``POST /api/classify?model=ID&name=FILE``: the body is the image file's bytes.
- ``POST /api/generate`` and ``POST /api/cag``: a JSON body; the answer is a Server-Sent-Events
  stream (``data: {json}`` lines) of ``accepted`` (the job id), ``queued`` (jobs ahead),
  ``started``, ``frame`` (step, total, a PNG data URL of the current images), then one of ``done``
  (final images), ``error`` or ``cancelled``. Closing the stream cancels the job.
- ``POST /api/jobs/{id}/cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import EgcError
from .jobs import FINAL, Job, JobQueue
from .service import LIMITS, RequestError, Service

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("egc.serve")


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _guard(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every refusal as a one-line JSON 4xx; anything unexpected as a one-line 500 (traceback to the log)."""
    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except RequestError as e:
            return _error(e.message, e.status)
        except EgcError as e:
            return _error(str(e), 400)
        except Exception as e:
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(f"internal error ({type(e).__name__}); the server keeps running", 500)
    return wrapped


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    cl = request.headers.get("content-length", "")
    if cl.isdigit() and int(cl) > limit:
        raise RequestError(f"the {what} is {int(cl) / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the {what} is over the limit of {limit / 2**20:g} MB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json(request: Request) -> Any:
    body = await _read_body(request, LIMITS["json_bytes"], "request body")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the request body is not valid JSON") from None


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _stream(queue: JobQueue, job: Job) -> AsyncIterator[bytes]:
    """A job's events as server-sent events, with keep-alives; a closed page cancels the job."""
    try:
        yield _sse({"type": "accepted", "job": job.id, "kind": job.kind})
        while True:
            try:
                ev = await asyncio.wait_for(job.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                yield b": keep-alive\n\n"  # also how a closed page is noticed while waiting
                continue
            yield _sse(ev)
            if ev["type"] in FINAL:
                return
    finally:
        queue.cancel(job)  # the page went away (or the job ended: then a no-op)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
    return _error(detail.get(status, getattr(exc, "detail", "error")), status)


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(f"internal error ({type(exc).__name__}); the server keeps running", 500)


def _middleware(allowed_hosts: list[str] | None) -> list[Any]:
    """Host-header checking (DNS rebinding protection) when ``allowed_hosts`` is given."""
    if not allowed_hosts:
        return []
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    return [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)]


def _classify_route(service: Service) -> Callable[[Request], Awaitable[Response]]:
    """POST /api/classify?model=&name=&top_k=: the uploaded image's top-k classes (in a worker thread)."""

    async def classify(request: Request) -> Response:
        data = await _read_body(request, LIMITS["upload_bytes"], "upload")
        model = request.query_params.get("model")
        name = request.query_params.get("name") or "upload"
        top_k = request.query_params.get("top_k", "5")
        if not top_k.isdigit() or not 1 <= int(top_k) <= 100:
            raise RequestError(f"top_k must be a whole number in [1, 100], got {top_k!r}")
        return JSONResponse(await run_in_threadpool(service.classify, model, data, name, int(top_k)))

    return classify


def build_app(service: Service, allowed_hosts: list[str] | None = None) -> Starlette:
    """The app around ``service``. ``allowed_hosts``: refuse other Host headers (DNS rebinding
    protection for a loopback server); None accepts any."""
    queue = JobQueue()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse(service.info())

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, **queue.status()})

    def start(kind: str, run: Callable[[Job], dict]) -> Response:
        job = queue.submit(kind, run)
        return StreamingResponse(_stream(queue, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Job-Id": job.id})

    async def generate(request: Request) -> Response:
        q = service.check_generate(await _read_json(request))
        return start("generate", lambda job: service.run_generate(q, job.emit, job.cancelled))

    async def cag(request: Request) -> Response:
        q = service.check_cag(await _read_json(request))
        return start("cag", lambda job: service.run_cag(q, job.emit, job.cancelled))

    async def cancel(request: Request) -> Response:
        job = queue.get(request.path_params["jid"])
        if job is None:
            raise RequestError(f"no running or waiting job {request.path_params['jid']!r}", 404)
        queue.cancel(job)
        return JSONResponse({"cancelled": job.id})

    routes = [
        Route("/", index),
        Route("/api/info", _guard(info)),
        Route("/api/health", _guard(health)),
        Route("/api/classify", _guard(_classify_route(service)), methods=["POST"]),
        Route("/api/generate", _guard(generate), methods=["POST"]),
        Route("/api/cag", _guard(cag), methods=["POST"]),
        Route("/api/jobs/{jid}/cancel", _guard(cancel), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        queue.close()

    app = Starlette(routes=routes, middleware=_middleware(allowed_hosts), exception_handlers={HTTPException: _http_error, Exception: _server_error},
                    lifespan=lifespan)
    app.state.service = service
    app.state.jobs = queue
    return app

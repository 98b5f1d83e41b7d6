"""One heavy job at a time: a FIFO queue served by one worker thread, with cancellation.

A job (a generation or a CaG run) is submitted from the event loop, waits its turn, runs in the
worker thread and reports through ``emit``: events go into the job's asyncio queue on the loop
(``call_soon_threadsafe``), so the web side reads them without blocking a thread. Waiting jobs are
told how many jobs are ahead of them whenever the line moves. ``cancel`` removes a waiting job, or
sets the flag the running job's progress callback checks after every step (it then raises
:class:`~egc.serve.service.Cancelled`, which the library lets propagate).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from typing import Any, Callable

from ..errors import EgcError
from .service import LIMITS, Cancelled, RequestError

log = logging.getLogger("egc.serve")
FINAL = ("done", "error", "cancelled")


class Job:
    def __init__(self, jid: str, kind: str, run: Callable[["Job"], dict], loop: asyncio.AbstractEventLoop) -> None:
        self.id = jid
        self.kind = kind
        self.run = run
        self.loop = loop
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.cancel_flag = threading.Event()
        self.state = "queued"  # queued | running | finished

    def emit(self, event: dict) -> None:
        """Thread-safe: hand an event to the job's reader on the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is reading
            self.cancel_flag.set()

    def cancelled(self) -> bool:
        return self.cancel_flag.is_set()


class JobQueue:
    """FIFO of heavy jobs, run one at a time by a daemon worker thread."""

    def __init__(self, max_waiting: int | None = None) -> None:
        self.max_waiting = LIMITS["queue"] if max_waiting is None else max_waiting
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._jobs: dict[str, Job] = {}
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stop = False
        self.completed = 0
        self._thread = threading.Thread(target=self._worker, name="egc-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, run: Callable[[Job], dict]) -> Job:
        loop = asyncio.get_running_loop()
        with self._cv:
            if len(self._waiting) >= self.max_waiting:
                raise RequestError(f"the server is busy: {len(self._waiting)} jobs are waiting (the limit); try again in a moment", 429)
            job = Job(str(next(self._ids)), kind, run, loop)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._announce_locked()
            self._cv.notify_all()
        return job

    def get(self, jid: str) -> Job | None:
        with self._cv:
            return self._jobs.get(jid)

    def status(self) -> dict[str, Any]:
        with self._cv:
            return {"running": None if self._running is None else self._running.kind, "waiting": len(self._waiting), "completed": self.completed}

    def cancel(self, job: Job) -> None:
        """Stop ``job``: drop it from the line, or flag it to stop at its next step. Idempotent."""
        with self._cv:
            job.cancel_flag.set()
            if job.state == "queued" and job in self._waiting:
                self._waiting.remove(job)
                job.state = "finished"
                self._jobs.pop(job.id, None)
                job.emit({"type": "cancelled"})
                self._announce_locked()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            for job in list(self._waiting):
                job.cancel_flag.set()
            if self._running is not None:
                self._running.cancel_flag.set()
            self._cv.notify_all()

    def _announce_locked(self) -> None:
        busy = 1 if self._running is not None else 0
        for i, job in enumerate(self._waiting):
            job.emit({"type": "queued", "ahead": i + busy})

    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                self._running = job
                self._announce_locked()
            job.emit({"type": "started"})
            try:
                if job.cancelled():
                    raise Cancelled()
                final = job.run(job)
            except Cancelled:
                final = {"type": "cancelled"}
            except RequestError as e:
                final = {"type": "error", "error": e.message}
            except EgcError as e:  # the library refused a value: its own one-line message
                final = {"type": "error", "error": " ".join(str(e).split())}
            except Exception as e:  # a bug or the environment: one line to the page, the traceback to the console
                log.exception("job %s (%s) failed", job.id, job.kind)
                final = {"type": "error", "error": f"the {job.kind} job failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"}
            job.emit(final)
            with self._cv:
                job.state = "finished"
                self._running = None
                self._jobs.pop(job.id, None)
                self.completed += 1
                self._announce_locked()
            del job, final  # nothing of a finished job stays referenced by the worker

"""QEMU's generic jobs, as far as the snapshot jobs need them: query-jobs, job-dismiss, JOB_STATUS_CHANGE.

A job is created by a command (snapshot-save, ...) with a ``job-id`` and runs
in a thread of its own. Its status goes as in QEMU 7.2 for a job that is
dismissed by hand (the snapshot jobs are): ``created`` and ``running`` while
the command is still running, then, after its reply, ``waiting``,
``pending``, ``concluded`` on success, or ``aborting``, ``concluded`` with
the job's ``error`` on failure; ``job-dismiss`` ends it (``null``). Each
change is a JOB_STATUS_CHANGE event. ``query-jobs`` lists the newest first.

The work starts a moment after the command returned, so its events follow the
command's reply as in QEMU, where the job runs in the main loop once the
command is done.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.schema import Arg, CommandTable

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

log = logging.getLogger(__name__)

Emit = Callable[[str, "dict[str, Any] | None"], None]
_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")  # QEMU's id_wellformed
START_DELAY = 0.02  # seconds between the command's return and the job's first step


class JobFailed(Exception):
    """Raised by a job's work: the message becomes the job's ``error``."""


@dataclass
class Job:
    id: str
    type: str
    status: str = "created"
    error: str | None = None
    current: int = 0
    total: int = 1

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"current-progress": self.current, "status": self.status,
                               "total-progress": self.total, "type": self.type, "id": self.id}
        if self.error is not None:
            out["error"] = self.error
        return out


class Jobs:
    """A machine's jobs (see the module docstring)."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _set(self, job: Job, status: str) -> None:
        job.status = status
        self.emit("JOB_STATUS_CHANGE", {"status": status, "id": job.id})

    def start(self, job_id: str, job_type: str, work: Callable[[], None]) -> Job:
        """Create and start a job; QmpError (QEMU's words) for a malformed or taken id."""
        if not _ID.match(job_id):
            raise QmpError(f"Invalid job ID '{job_id}'")
        with self._lock:
            if job_id in self._jobs:
                raise QmpError(f"Job ID '{job_id}' already in use")
            job = self._jobs[job_id] = Job(job_id, job_type)
        self._set(job, "created")
        self._set(job, "running")
        t = threading.Timer(START_DELAY, self._run, (job, work))
        t.name = f"job-{job_id}"
        t.daemon = True
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return job

    def _run(self, job: Job, work: Callable[[], None]) -> None:
        try:
            work()
        except JobFailed as exc:
            job.error = str(exc)
        except Exception as exc:  # a bug must fail the job, not kill the thread silently
            log.exception("job %s failed", job.id)
            job.error = f"{type(exc).__name__}: {exc}"
        job.current = job.total
        if job.error is None:
            for status in ("waiting", "pending", "concluded"):
                self._set(job, status)
        else:
            self._set(job, "aborting")
            self._set(job, "concluded")

    def wait(self, timeout: float | None = None) -> None:
        """Until every job started so far has finished its work (tests, shutdown)."""
        for t in list(self._threads):
            t.join(timeout)

    def query(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.info() for j in reversed(self._jobs.values())]

    def dismiss(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise QmpError("Job not found")
            if job.status != "concluded":
                raise QmpError(f"Job '{job_id}' in state '{job.status}' cannot accept command verb 'dismiss'")
            del self._jobs[job_id]
        self._set(job, "null")


def query_jobs(ctx: "Context") -> list:
    return ctx.machine.jobs.query()


def job_dismiss(ctx: "Context", id: str) -> dict:
    ctx.machine.jobs.dismiss(id)
    return {}


def add_job_commands(table: CommandTable) -> None:
    """Put query-jobs and job-dismiss into ``table``."""
    table.command("query-jobs")(query_jobs)
    table.command("job-dismiss", id=Arg("str"))(job_dismiss)

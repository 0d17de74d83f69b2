"""The in-process VM: the API's one adapter onto kvmpy's Machine. Nothing else in kvmpy.api touches it.

The Machine is built on the calling thread (kvmpy installs its vCPU kick
signal handler from the main thread) and ``Machine.run`` serves its events on
a background thread, so the script keeps control. Only the Machine's public
surface is used: the constructor, ``run``, ``reset``, ``close``, its
lifecycle (``pause``/``resume``, ``request_quit``, ``add_event_listener``), its
board's ``memory`` (for read_memory/write_memory), plus the snapshot module's ``Snapshot.take``/
``reset`` for the fast dirty-page restore and the QMP server, which is
started on a private UNIX socket the first time a script sends a QMP command.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from kvmpy.api.console import Console, ConsoleBackend
from kvmpy.api.errors import VMError, VMGone, WaitTimeout
from kvmpy.api.events import Event
from kvmpy.api.options import VMOptions
from kvmpy.api.qmp import SOCKET_NAME, QmpConnection, private_socket_dir
from kvmpy.config import ConfigError

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 30.0  # seconds a quit may take before close() gives up waiting for the run loop


class InProcessVM:
    """A Machine in this process, running on a background thread."""

    mode = "in-process"

    def __init__(self, options: VMOptions, console: Console, on_event: Callable[[Event], None]) -> None:
        from kvmpy.loader.errors import LoaderError
        from kvmpy.machine import Machine  # the heavy imports happen only when a VM is made

        self.console = console
        try:
            self.machine = Machine(options.to_config(in_process=True), console=ConsoleBackend(console))
        except ConfigError:
            raise
        except (LoaderError, ValueError) as exc:  # what the kvmpy command reports as a usage error (status 2)
            raise ConfigError(str(exc)) from None
        self._on_event_cb = on_event
        self.machine.lifecycle.add_event_listener(self._on_event)
        self._status: int | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvmpy-api-vm", daemon=True)
        self._qmp: QmpConnection | None = None
        self._qmp_server: Any = None
        self._qmp_dir: Path | None = None
        self._qmp_lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def _on_event(self, name: str, data: Any) -> None:
        if name == "SHUTDOWN" and self._vanished():
            # As the child process's console says it (kvmpy.api.child): a guest that reset itself without
            # a panic under -no-reboot has vanished, which scripts and the bed tell apart from a wrong answer.
            self.console.close("the VM has stopped: the guest triple-faulted and reset (-no-reboot)", vanished=True)
        self._on_event_cb(Event(name, dict(data or {}), time.time()))

    def _vanished(self) -> bool:
        ev = self.machine.lifecycle.stop_event
        return (ev is not None and ev.kind == "reset" and ev.message == "triple fault"
                and not self.console.panicked)

    def _run(self) -> None:
        try:
            self._status = self.machine.run()
        except BaseException as exc:  # reported by wait()
            self._error = exc
        finally:
            self._done.set()

    # ---- control -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread.ident is not None and not self._done.is_set()

    def _alive(self, what: str) -> None:
        if not self.running:  # as for a child process, whose QMP socket is gone with it
            raise VMGone(f"{what}: the VM has exited")

    def pause(self) -> None:
        self._alive("pause")
        self.machine.lifecycle.pause()

    def resume(self) -> None:
        self._alive("resume")
        try:
            self.machine.lifecycle.resume()
        except RuntimeError as exc:  # "Resetting the Virtual Machine is required", as QMP cont says
            raise VMError(str(exc)) from None

    def reset(self) -> None:
        self._alive("reset")
        self.machine.reset()

    def snapshot(self) -> Any:
        from kvmpy.migration.snapshot import Snapshot

        self._alive("snapshot")
        return Snapshot.take(self.machine)

    def restore(self, snapshot: Any) -> int:
        self._alive("restore")
        return snapshot.reset()

    def read_memory(self, address: int, length: int) -> bytes:
        """Also after the guest ended (for a post-mortem), until close()."""
        if self._closed:
            raise VMError("the VM is closed")
        return self.machine.board.memory.read(address, length)

    def write_memory(self, address: int, data: bytes) -> None:
        if self._closed:
            raise VMError("the VM is closed")
        self.machine.board.memory.write(address, data)

    # ---- QMP ------------------------------------------------------------------
    def qmp(self, command: str, arguments: dict[str, Any] | None, timeout: float | None) -> Any:
        self._alive(command)
        return self._monitor().execute(command, arguments, timeout)

    def _monitor(self) -> QmpConnection:
        with self._qmp_lock:
            if self._qmp is None:
                if self._closed:
                    raise VMError("the VM is closed")
                from kvmpy.machine import qmp_commands
                from kvmpy.monitor.endpoint import parse_endpoint
                from kvmpy.monitor.server import QmpServer

                self._qmp_dir = private_socket_dir("kvmpy-api-")
                path = self._qmp_dir / SOCKET_NAME
                self._qmp_server = QmpServer(self.machine, [parse_endpoint(f"unix:{path},server=on,wait=off")],
                                             qmp_commands())
                self._qmp_server.start()
                # Events already reach the script through the machine's listener; drop the socket's copies.
                self._qmp = QmpConnection(str(path), on_event=None)
            return self._qmp

    # ---- the end ---------------------------------------------------------------
    def wait(self, timeout: float | None) -> int:
        if not self._done.wait(timeout):
            raise WaitTimeout(f"the VM was still running after {timeout} s")
        if self._error is not None:
            raise VMError(f"the VM failed: {self._error}") from self._error
        assert self._status is not None
        return self._status

    def kill(self) -> None:
        """The quickest stop the in-process machine has: a host quit, served at once by the run loop."""
        if self.running:
            self.machine.lifecycle.request_quit(0, "host-signal")
            self._done.wait(QUIT_TIMEOUT)

    def shutdown(self, timeout: float) -> None:
        if self.running:
            self.machine.lifecycle.request_quit(0)
            self._done.wait(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill()
        with self._qmp_lock:
            if self._qmp is not None:
                self._qmp.close()
            if self._qmp_server is not None:
                self._qmp_server.close()
            if self._qmp_dir is not None:
                shutil.rmtree(self._qmp_dir, ignore_errors=True)
        if self.running:
            log.warning("the VM's run loop did not stop within %s s; leaving its resources open", QUIT_TIMEOUT)
            return
        self.machine.close()
        self.console.close()

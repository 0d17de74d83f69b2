"""The child-process VM: ``python3 -m kvmpy`` managed like QEMU's QEMUMachine manages qemu-system.

The child gets ``-qmp unix:SOCK,server=on,wait=on`` in a private 0700
temporary directory, so it waits for our QMP client before its vCPUs run and
no event is missed; its serial console is ``-serial stdio`` on pipes (a
reader thread feeds the Console; writes to its stdin are the guest's serial
input). Its stderr is kept for error messages. The exit status is the
child's: isa-debug-exit's ``(value << 1) | 1``, 0 for a poweroff or quit,
1 for a VM failure, 2 for a usage error, and ``-N`` when killed by signal N.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from kvmpy.api.console import Console
from kvmpy.api.errors import QMPError, UnsupportedError, VMError, VMGone, WaitTimeout, output_tail
from kvmpy.api.events import Event
from kvmpy.api.options import VMOptions
from kvmpy.api.qmp import SOCKET_NAME, QmpConnection, private_socket_dir
from kvmpy.config import ConfigError

log = logging.getLogger(__name__)

START_TIMEOUT = 300.0  # from spawning the child until its QMP socket accepts us (a cold start under nested TCG takes minutes)
STDERR_LIMIT = 64 << 10
EXIT_GRACE = 5.0  # how long a console at EOF waits for the child's status and the rest of its stderr
USAGE_ERROR = 2  # kvmpy's exit status for a usage mistake (one line on stderr)


class ChildProcessVM:
    """A kvmpy child process, controlled over QMP, its console on stdio pipes."""

    mode = "process"

    def __init__(self, options: VMOptions, console: Console, on_event: Callable[[Event], None]) -> None:
        self.console = console
        self._options = options
        self._on_event = on_event
        self._dir = private_socket_dir("kvmpy-vm-")
        self._socket = self._dir / SOCKET_NAME
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QmpConnection | None = None
        self._stderr = bytearray()
        self._threads: list[threading.Thread] = []
        self._stdin_lock = threading.Lock()

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "kvmpy", *self._options.to_argv(self._socket)]

    def start(self) -> None:
        env = dict(os.environ)
        # The child imports the same kvmpy as this process, wherever it lives.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env, start_new_session=True)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._spawn(self._proc.stdout.fileno(), self._on_stdout, "kvmpy-api-stdout")
        self._spawn(self._proc.stderr.fileno(), self._on_stderr, "kvmpy-api-stderr")
        self.console.attach_input(self._write_stdin)
        try:
            self._qmp = self._connect()
            if not self._options.paused:
                self.resume()
        except BaseException:
            self.kill()
            raise

    def _spawn(self, fd: int, sink: Callable[[bytes], None], name: str) -> None:
        t = threading.Thread(target=_pump, args=(fd, sink), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _connect(self) -> QmpConnection:
        assert self._proc is not None
        end = time.monotonic() + START_TIMEOUT
        while not self._socket.exists():
            if self._proc.poll() is not None:
                self._join_pumps()
                if self._proc.returncode == USAGE_ERROR:  # a kernel kvmpy cannot boot, say: as in-process
                    raise ConfigError(self.stderr.strip().removeprefix("kvmpy: error: "))
                raise VMError(f"kvmpy exited with status {self._proc.returncode} before its QMP socket "
                              f"appeared: {self.stderr.strip() or '(no message)'}")
            if time.monotonic() > end:
                raise VMError(f"kvmpy did not open its QMP socket within {START_TIMEOUT} s")
            time.sleep(0.01)
        # kvmpy renames its socket into place just before it listens: a connect in between is refused.
        return QmpConnection(str(self._socket), on_event=lambda msg: self._on_event(Event.from_qmp(msg)),
                             retry_for=max(0.0, end - time.monotonic()),
                             give_up=lambda: self._proc is None or self._proc.poll() is not None)

    # ---- pipes -----------------------------------------------------------------
    def _on_stdout(self, data: bytes) -> None:
        if data:
            self.console.feed(data)
        else:
            reason, vanished = self._exit_reason()
            self.console.close(reason, vanished=vanished)

    def _exit_reason(self) -> tuple[str, bool]:
        """'the VM has exited' with the child's status and the tail of its stderr, so a console
        that ended early says why (a crash shows its traceback or signal); and whether the guest
        vanished: status 0 after a triple fault (kvmpy's warning, kvmpy/vcpu/thread.py), no panic shown."""
        assert self._proc is not None
        try:
            status = self._proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            return "the VM closed its console (the process is still running)", False
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(EXIT_GRACE)
        reason = f"the VM has exited (status {status})"
        err = self.stderr.strip()
        vanished = status == 0 and "the guest triple-faulted" in err and not self.console.panicked
        if vanished:
            reason += ": the guest triple-faulted and reset (-no-reboot)"
        return (f"{reason}; its stderr ended: {output_tail(err, 2000)}" if err else reason), vanished

    def _on_stderr(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-STDERR_LIMIT]

    def _join_pumps(self) -> None:
        for t in self._threads:
            t.join(5)

    def _write_stdin(self, data: bytes) -> int:
        assert self._proc is not None and self._proc.stdin is not None
        with self._stdin_lock:
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise VMGone("the VM has exited; its console takes no more input") from None
        return len(data)

    @property
    def stderr(self) -> str:
        """What the child wrote to stderr (kvmpy's warnings and errors), the last 64 KiB."""
        return bytes(self._stderr).decode(errors="replace")

    # ---- control -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def qmp(self, command: str, arguments: dict[str, Any] | None, timeout: float | None) -> Any:
        if self._qmp is None:
            raise VMError("the VM is not started")
        return self._qmp.execute(command, arguments, timeout)

    def pause(self) -> None:
        self.qmp("stop", None, None)

    def resume(self) -> None:
        self.qmp("cont", None, None)

    def reset(self) -> None:
        self.qmp("system_reset", None, None)

    def snapshot(self) -> Any:
        raise UnsupportedError("snapshot()/restore() need an in-process VM (kvmpy.VM(..., process=False)): "
                               "kvmpy has no QMP command for in-memory snapshots; a child VM can save its "
                               "state to a file with vm.qmp('migrate', {'uri': 'file:PATH'})")

    def restore(self, snapshot: Any) -> int:
        return self.snapshot()

    def read_memory(self, address: int, length: int) -> bytes:
        raise UnsupportedError("read_memory() needs an in-process VM; in a child process use "
                               "vm.hmp('xp /4wx ADDRESS')")

    def write_memory(self, address: int, data: bytes) -> None:
        raise UnsupportedError("write_memory() needs an in-process VM (process=False)")

    # ---- the end ---------------------------------------------------------------
    def wait(self, timeout: float | None) -> int:
        assert self._proc is not None
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout(f"the VM was still running after {timeout} s") from None
        self._join_pumps()
        if status == USAGE_ERROR:
            raise VMError(f"kvmpy refused its command line: {output_tail(self.stderr.strip(), 500)}")
        return status

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def shutdown(self, timeout: float) -> None:
        """QMP quit, then SIGTERM, then SIGKILL: each step gets a share of ``timeout``."""
        if not self.running:
            return
        assert self._proc is not None
        try:
            self.qmp("quit", None, timeout / 2)
        except (QMPError, VMError):
            pass
        try:
            self._proc.wait(timeout / 2)
            return
        except subprocess.TimeoutExpired:
            pass
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        self.shutdown(10.0)
        self.kill()
        if self._qmp is not None:
            self._qmp.close()
        self._join_pumps()  # the child is gone: its pipes are at EOF
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        self.console.close("the VM has exited")
        shutil.rmtree(self._dir, ignore_errors=True)


def _pump(fd: int, sink: Callable[[bytes], None]) -> None:
    """Hand everything read from ``fd`` to ``sink``; an empty read (EOF) is handed on last."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        sink(data)
        if not data:
            return

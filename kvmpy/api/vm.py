"""``kvmpy.VM``: a virtual machine a Python script can start, drive and stop, in-process or as a child.

    with kvmpy.VM(kernel="bzImage", initrd="initrd.gz", append="console=ttyS0",
                  memory="512M", smp=2) as vm:
        vm.console.expect("login:")
        vm.console.send("root\\n")
        print(vm.qmp("query-status"))

The same methods work in both modes; the mode only decides where the VM
runs (see kvmpy.api.inprocess and kvmpy.api.child, the two backends).
In-process is the fastest (snapshot/restore, direct memory access); a child
process isolates the VM and is what ``kvmpy`` users run by hand. Exit
statuses are QEMU's: isa-debug-exit ``(value << 1) | 1``, 0 for a poweroff
or quit, 1 for a VM failure.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from kvmpy.api.console import Console
from kvmpy.api.errors import VMError
from kvmpy.api.events import Event, EventLog
from kvmpy.api.options import VMOptions

DEFAULT_SHUTDOWN_TIMEOUT = 10.0


class Backend(Protocol):
    """What the two modes implement; ``VM`` adds nothing but bookkeeping on top."""

    mode: str
    running: bool

    def start(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def reset(self) -> None: ...
    def snapshot(self) -> Any: ...
    def restore(self, snapshot: Any) -> int: ...
    def read_memory(self, address: int, length: int) -> bytes: ...
    def write_memory(self, address: int, data: bytes) -> None: ...
    def qmp(self, command: str, arguments: dict[str, Any] | None, timeout: float | None) -> Any: ...
    def wait(self, timeout: float | None) -> int: ...
    def kill(self) -> None: ...
    def shutdown(self, timeout: float) -> None: ...
    def close(self) -> None: ...


class VM:
    """One VM. Use it as a context manager (or call ``start()`` and ``close()``): leaving always stops it.

    Keyword arguments mirror kvmpy's flags: ``kernel`` (-kernel), ``initrd``,
    ``append``, ``memory`` ("512M", or a number of MiB as in -m), ``smp``,
    ``name``, ``debug_exit`` (True for QEMU's isa-debug-exit at 0x501, or
    ``(iobase, iosize)``), ``no_reboot``, ``paused`` (-S), ``linux_boot``
    (auto, bzimage, pvh). ``process=True`` runs it as a managed ``kvmpy``
    child process; ``extra_args`` adds kvmpy flags there (in-process: the device options -device, -drive,
    -blockdev, -netdev, -nic, -chardev, -object, -hda..-hdd, -cdrom).
    """

    def __init__(self, kernel: "str | os.PathLike[str]", *, process: bool = False, **options: Any) -> None:
        self.options = VMOptions.build(kernel, **options)
        self.console = Console()
        self._events = EventLog()
        self._snapshot: Any = None
        self._status: int | None = None
        if process:
            from kvmpy.api.child import ChildProcessVM

            self._backend: Backend = ChildProcessVM(self.options, self.console, self._events.add)
        else:
            from kvmpy.api.inprocess import InProcessVM

            self._backend = InProcessVM(self.options, self.console, self._events.add)
        self._started = False
        self._closed = False

    # ---- life ------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``in-process`` or ``process``."""
        return self._backend.mode

    def start(self) -> "VM":
        """Boot the VM (``with VM(...)`` does this); returns the VM."""
        if self._closed:
            raise VMError("this VM is closed; make a new one")
        if not self._started:
            self._started = True
            self._backend.start()
        return self

    def __enter__(self) -> "VM":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """True until the VM has ended (the guest exited, or it was stopped)."""
        return self._started and self._backend.running

    def wait(self, timeout: float | None = None) -> int:
        """Block until the VM ends; its exit status. WaitTimeout (a TimeoutError) if it is still running."""
        self._require_started()
        if self._status is None:
            self._status = self._backend.wait(timeout)
        return self._status

    def kill(self) -> None:
        """Stop the VM now, without a clean guest shutdown."""
        if self._started:
            self._backend.kill()

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> int:
        """Stop the VM as QMP ``quit`` does (killing it if that takes longer than ``timeout``); the status."""
        self._require_started()
        self._backend.shutdown(timeout)
        return self.wait(timeout)

    def close(self) -> None:
        """Stop the VM if it runs and free everything it holds (sockets, temporary files, KVM fds)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._backend.close()
        finally:
            self._events.close()
            self.console.close()

    # ---- control -------------------------------------------------------------
    def qmp(self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = 60.0,
            **kwargs: Any) -> Any:
        """Run a QMP command; returns its ``return`` value, or raises QMPError (``error_class``, ``desc``).

        Arguments go in ``arguments`` (needed for names with dashes) or as keywords.
        """
        self._require_started()
        args = {**(arguments or {}), **kwargs}
        return self._backend.qmp(command, args or None, timeout)

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command (``info registers``, ``xp /4wx 0x1000``, ...); its text."""
        return self.qmp("human-monitor-command", {"command-line": command_line})

    @property
    def status(self) -> str:
        """QMP's run state: running, paused, prelaunch, shutdown, ..."""
        return self.qmp("query-status")["status"]

    def pause(self) -> None:
        """Stop the vCPUs (QMP ``stop``); their state is kept."""
        self._require_started()
        self._backend.pause()

    def resume(self) -> None:
        """Run the vCPUs again (QMP ``cont``); also starts a VM made with ``paused=True``."""
        self._require_started()
        self._backend.resume()

    def reset(self) -> None:
        """A system reset: the guest reboots (RAM is kept, as on real hardware)."""
        self._require_started()
        self._backend.reset()

    def snapshot(self) -> Any:
        """Capture RAM, vCPUs and devices in memory; ``restore()`` returns here. In-process VMs only.

        Taking it copies RAM once and turns on dirty logging; each restore then
        rewrites only the pages the guest changed since.
        """
        self._require_started()
        self._snapshot = self._backend.snapshot()
        return self._snapshot

    def restore(self, snapshot: Any = None) -> int:
        """Back to ``snapshot`` (default: the latest); the number of pages rewritten. The run state is kept."""
        self._require_started()
        snap = snapshot if snapshot is not None else self._snapshot
        if snap is None:
            raise VMError("restore() needs a snapshot: call vm.snapshot() first")
        return self._backend.restore(snap)

    def read_memory(self, address: int, length: int) -> bytes:
        """Guest-physical memory (in-process VMs only)."""
        return self._backend.read_memory(address, length)

    def write_memory(self, address: int, data: bytes) -> None:
        """Write guest-physical memory, e.g. a fuzzing input (in-process VMs only)."""
        self._backend.write_memory(address, data)

    # ---- events ----------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        """Every QMP event so far (STOP, RESUME, RESET, SHUTDOWN, ...), oldest first."""
        return self._events.all()

    def wait_event(self, name: str, timeout: float | None = 30.0, **data: Any) -> Event:
        """The next ``name`` event (after the one the previous wait returned) whose data has ``data``."""
        return self._events.wait(name, timeout, **data)

    def _require_started(self) -> None:
        if not self._started:
            raise VMError("the VM is not started: use `with kvmpy.VM(...) as vm:` or vm.start()")

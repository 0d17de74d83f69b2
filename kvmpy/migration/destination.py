"""MigrationDestination: receives a stream into a VM (a MigratableVm) whose vCPUs have never run (or are parked).

RAM is written as it arrives, into this VM only; state sections are kept
aside and restored only after END's checksum has been verified. The disk
images, opened inactive (``-incoming``) while the source wrote them, are then
activated: locked, their metadata read again (QEMU's bdrv_activate_all); if
another process holds them the destination refuses the VM (NAK_BLOCK) and
the source carries on. On a two-way channel the destination then answers ACK
and starts only once the source has answered GO, so a half-received VM never
runs, and neither does a VM the source may still consider its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from kvmpy.block.drive import activate_drives, inactivate_drives
from kvmpy.block.errors import BlockError
from kvmpy.lifecycle import RunState
from kvmpy.migration import stream
from kvmpy.migration.errors import MigrationError, StreamError
from kvmpy.migration.interface import MigratableVm
from kvmpy.migration.ram import RamReceiver
from kvmpy.migration.stream import StreamReader
from kvmpy.migration.transport import FileChannel, Listener, SocketChannel, parse_uri
from kvmpy.vmstate import check_config

log = logging.getLogger(__name__)

GO_TIMEOUT = 60.0


@dataclass
class IncomingResult:
    rounds: int
    pages: int
    bytes: int
    seconds: float


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split("\n"))


class MigrationDestination:
    def __init__(self, vm: MigratableVm, channel: SocketChannel | FileChannel) -> None:
        self.vm = vm
        self.channel = channel

    def receive(self) -> IncomingResult:
        """Load the whole stream into the machine (left paused). Raises StreamError/MigrationError."""
        t0 = time.monotonic()
        vm = self.vm
        ch = self.channel
        reader = StreamReader(ch)
        rounds = 0
        try:
            remote = reader.header()
            check_config(vm.vmstate.describe(), remote)
            blocks = vm.ram_blocks
            reader.block_pages = [b.npages for b in blocks]
            reader.block_views = [b.mv for b in blocks]
            ram = RamReceiver(blocks)
            sections: dict[str, Any] = {}
            while True:
                kind, rec = reader.next()
                if kind == stream.T_RUN:
                    ram.applied_run(rec)
                elif kind == stream.T_ZERORUN:
                    ram.apply_zero_run(rec)
                elif kind == stream.T_PAGES:
                    ram.apply(rec)
                elif kind == stream.T_ROUND:
                    rounds = rec
                elif kind == stream.T_SECTION:
                    name, state = rec
                    if name in sections:
                        raise StreamError(f"section {name!r} appears twice")
                    sections[name] = state
                elif kind == stream.T_END:
                    break
            with vm.lifecycle.vcpus_parked():
                vm.vmstate.apply(sections)
            self._take_drives()
            if ch.duplex:
                ch.write(stream.ACK)
                ch.set_timeout(GO_TIMEOUT)
                try:
                    go = stream.read_reply(ch, len(stream.GO))
                except OSError:
                    go = b""
                if go != stream.GO:
                    self._release_drives()
                    raise MigrationError("the source did not hand the VM over (no GO after the ACK); "
                                         "not starting it here")
        except StreamError:
            self._nak()
            raise
        except OSError as exc:
            raise StreamError(f"the incoming stream broke: {exc.strerror or exc}") from None
        finally:
            ch.close()
        return IncomingResult(rounds, ram.pages, reader.bytes, time.monotonic() - t0)

    def _take_drives(self) -> None:
        """The source has flushed and unlocked the images (it did so before sending the state):
        lock them and read their metadata again. On failure, tell the source to keep the VM."""
        try:
            activate_drives(self.vm.drives)
        except BlockError as exc:
            if self.channel.duplex:
                try:
                    self.channel.write(stream.NAK_BLOCK)
                except OSError:
                    pass
            raise MigrationError(f"could not take over the disk images: {_one_line(exc)}") from None

    def _release_drives(self) -> None:
        """No GO: the source may run the VM again, so give the images back untouched."""
        try:
            inactivate_drives(self.vm.drives)
        except BlockError:
            log.exception("could not give the disk images back")

    def _nak(self) -> None:
        if self.channel.duplex:
            try:
                self.channel.write(stream.NAK)
            except OSError:
                pass


class Incoming:
    """``-incoming URI`` / migrate-incoming: wait for a stream in a thread, load it, then start the VM.

    ``on_done(error)`` is called with None on success or the error message on failure.
    """

    def __init__(self, vm: MigratableVm, uri: str, autostart: bool = True,
                 on_done: Callable[[str | None], None] | None = None) -> None:
        self.vm = vm
        self.uri = parse_uri(uri)
        self.autostart = autostart
        self.on_done = on_done or (lambda err: None)
        self.listener = Listener(self.uri)  # bind now: errors reach the caller, and the port is known
        self.result: IncomingResult | None = None
        self.error: str | None = None
        self.done = threading.Event()
        vm.lifecycle.set_state(RunState.INMIGRATE)
        self._thread = threading.Thread(target=self._main, name="migration-in", daemon=True)

    @property
    def address(self) -> Any:
        return self.listener.address

    def start(self) -> "Incoming":
        self._thread.start()
        return self

    def _main(self) -> None:
        lifecycle = self.vm.lifecycle
        try:
            channel = self.listener.accept()
            self.result = MigrationDestination(self.vm, channel).receive()
            log.info("incoming migration done: %d rounds, %d bytes in %.2f s", self.result.rounds,
                     self.result.bytes, self.result.seconds)
            lifecycle.set_state(RunState.PAUSED)
            if self.autostart:
                lifecycle.resume()
        except Exception as exc:
            self.error = str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"
            log.error("load of migration failed: %s", self.error)
        finally:
            self.listener.close()
            self.done.set()
            self.on_done(self.error)

    def close(self) -> None:
        self.listener.close()

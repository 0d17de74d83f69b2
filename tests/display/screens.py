"""A kvmpy machine's screen as a person and a management tool see it, for display tests that boot real guests:
QMP ``screendump`` (PPM), a vncdotool capture of ``-vnc``, the bytes an idle screen sends a polling viewer,
and a live migration of the machine to a second kvmpy in the same process.

``KvmpyVmm`` runs kvmpy's Machine on a thread with ``-device VGA``, ``-vnc 127.0.0.1:N``
and a QMP socket, so a test can also look at the adapter itself (its VBE mode and
registers). The Linux bed test (tests/linux/test_display_guest.py) and the host's
SeaBIOS test (tests/display/test_seabios_screen.py) share these.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kvmpy.display.rfb import ENC_RAW
from kvmpy.migration.migrate_cli import QmpClient
from tests.display.rfb_client import RawClient
from tests.monitor.test_display import free_display

STEP = 120.0  # one step: a screendump, a VNC capture, a guest's answer (the nested bed is slow)
MIGRATE_TIMEOUT = 300.0
RUN_LIMIT = 3000.0  # a machine left running by a failed test stops by then
IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class Screen:
    """A picture: R, G, B bytes per pixel, row after row."""

    width: int
    height: int
    rgb: bytes

    def rows_differing(self, other: "Screen") -> list[int]:
        import numpy as np

        assert (self.width, self.height) == (other.width, other.height), (self, other)
        a = np.frombuffer(self.rgb, np.uint8).reshape(self.height, self.width * 3)
        b = np.frombuffer(other.rgb, np.uint8).reshape(other.height, other.width * 3)
        return np.nonzero((a != b).any(axis=1))[0].tolist()

    def without(self, x: int, y: int, w: int, h: int) -> "Screen":
        """This picture with a rectangle blacked out (a blinking cursor's cell, say)."""
        import numpy as np

        px = np.frombuffer(self.rgb, np.uint8).reshape(self.height, self.width, 3).copy()
        px[y:y + h, x:x + w] = 0
        return Screen(self.width, self.height, px.tobytes())

    def __repr__(self) -> str:  # not 2 MiB of pixels in a failure message
        return f"Screen({self.width}x{self.height}, sha256 {hashlib.sha256(self.rgb).hexdigest()[:12]})"


def read_ppm(data: bytes) -> Screen:
    """A P6 file as QEMU's screendump writes it: three header lines, then the pixels."""
    magic, size, maxval, pixels = data.split(b"\n", 3)
    w, h = (int(v) for v in size.split())
    assert magic == b"P6" and maxval == b"255" and len(pixels) == w * h * 3, (magic, size, maxval, len(pixels))
    return Screen(w, h, pixels)


def screendump(qmp: QmpClient, path: Path) -> Screen:
    qmp.execute("screendump", filename=str(path))
    return read_ppm(path.read_bytes())


def vnc_capture(port: int, zrle: bool = False) -> Screen:
    """The screen as vncdotool sees it on a fresh connection (a full update), in Raw or ZRLE rectangles."""
    from vncdotool import api
    from vncdotool.client import VNCDoToolFactory

    from tests.display.test_vnc import ZrleFactory, capture

    client = api.connect(f"127.0.0.1::{port}", timeout=STEP, factory_class=ZrleFactory if zrle else VNCDoToolFactory)
    try:
        rgb = capture(client)
        return Screen(*client.screen.size, rgb)
    finally:
        client.disconnect()


def idle_vnc_bytes(port: int) -> int:
    """Update bytes a viewer that polls for incremental updates receives over IDLE_SECONDS, after a full one."""
    viewer = RawClient(("127.0.0.1", port))
    try:
        viewer.sock.settimeout(STEP)
        viewer.set_encodings(ENC_RAW)
        viewer.request(False)
        viewer.read_update()
        return viewer.idle_bytes(IDLE_SECONDS)
    finally:
        viewer.close()


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """``predicate()``'s first true value, polled every ``interval`` s (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)
    return value


class KvmpyVmm:
    """kvmpy's Machine in this process with -device VGA, -vnc 127.0.0.1:N and a QMP socket, run on a thread."""

    def __init__(self, sock_dir: Path, name: str, incoming: str | None = None, **boot: object) -> None:
        """``boot``: MachineConfig fields saying what runs (kernel, initrd, append, memory); none for SeaBIOS."""
        from kvmpy.config import MachineConfig
        from kvmpy.config_devices import DeviceSpec
        from kvmpy.devices.chardev import BufferBackend
        from kvmpy.machine import Machine, qmp_commands
        from kvmpy.monitor.endpoint import parse_endpoint
        from kvmpy.monitor.server import QmpServer

        self.display = free_display()
        cfg = MachineConfig(serial="stdio", no_reboot=True, devices=(DeviceSpec(driver="VGA"),),
                            vnc=f"127.0.0.1:{self.display}", **boot).validate()  # type: ignore[arg-type]
        self.console = BufferBackend()
        self.machine = Machine(cfg, console=self.console)  # on the main thread: it installs the kick handler
        if incoming is not None:
            self.machine.migration.start_incoming(incoming)
        path = sock_dir / f"{name}.qmp"
        self.server = QmpServer(self.machine, [parse_endpoint(f"unix:{path},server=on,wait=off")], qmp_commands())
        self.server.start()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"kvmpy-{name}", daemon=True)
        self.thread.start()
        self.qmp = QmpClient(f"unix:{path}", timeout=STEP)
        self.port = 5900 + self.display

    def _run(self) -> None:
        try:
            self.machine.run(timeout=RUN_LIMIT)
        except BaseException as exc:  # reported by the test through text()
            self.error = exc

    def text(self) -> str:
        tail = self.console.output.decode(errors="replace")[-3000:]
        return tail if self.error is None else f"{tail}\n[the machine's run ended with {self.error!r}]"

    def wait_for(self, marker: bytes, timeout: float) -> None:
        assert self.console.wait_for(marker, timeout), f"no {marker!r} within {timeout} s: {self.text()}"

    def vga(self):  # noqa: ANN201 - kvmpy.devices.vga.pci_vga.VgaPci
        from kvmpy.devices.vga.factory import find_display

        vga = find_display(self.machine.board.devices.values())
        assert vga is not None
        return vga

    def vbe_mode(self):  # noqa: ANN201 - kvmpy.devices.vga.dispi.VbeMode
        return self.vga().core.dispi.mode()

    def close(self) -> None:
        self.qmp.close()
        self.machine.lifecycle.request_quit(0)
        self.thread.join(60)
        self.server.close()
        self.machine.close()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(src: KvmpyVmm, tmp: Path, figures: dict, **boot: object) -> KvmpyVmm:
    """A second kvmpy, booted as ``boot`` says, waiting on ``-incoming tcp:``; ``src``'s guest migrated to it and
    running there. The caller closes it."""
    port = free_tcp_port()
    dst = KvmpyVmm(tmp, "dst", incoming=f"tcp:127.0.0.1:{port}", **boot)
    try:
        assert dst.qmp.execute("query-status")["status"] == "inmigrate"
        begin = time.monotonic()
        src.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        info = wait_for("the migration", lambda: (i := src.qmp.execute("query-migrate"))["status"] in (
            "completed", "failed", "cancelled") and i, MIGRATE_TIMEOUT)
        assert info["status"] == "completed", (info, dst.text())
        figures.update(migration_s=round(time.monotonic() - begin, 1), downtime_ms=info.get("downtime"),
                       migrated_bytes=info.get("ram", {}).get("transferred"))
        wait_for("the destination running", lambda: dst.qmp.execute("query-status")["status"] == "running", STEP)
    except BaseException:
        dst.close()
        raise
    return dst

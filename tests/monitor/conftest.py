"""Fixtures for the monitor tests: a running kvmpy guest with a QMP server, and QMP clients for it
(``qmp_process`` also serves the differential tests that start QEMU or kvmpy as a process).

The VM is built in-process (the main thread must create it) and runs in a
background thread; the UNIX socket lives in a short directory under /tmp,
never on a 9p share.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kvmpy.config import DebugExitConfig, MachineConfig
from kvmpy.devices.chardev import BufferBackend
from kvmpy.monitor.endpoint import parse_endpoint
from kvmpy.monitor.server import QmpServer
from tests.guests.build import build_guest

COUNTER_ADDR = 0x200000


@dataclass
class RunningVm:
    machine: Any
    console: BufferBackend
    server: QmpServer
    path: Path
    result: list = field(default_factory=list)
    thread: threading.Thread | None = None

    def count(self) -> int:
        return self.machine.board.memory.read_u32(COUNTER_ADDR)

    def wait_exit(self, timeout: float = 20) -> int | None:
        assert self.thread is not None
        self.thread.join(timeout)
        return self.result[0] if self.result else None


def boot(tmpdir: Path, guest: str = "counter", name: str | None = "qmp-test", start_paused: bool = False,
         smp: int = 1, no_reboot: bool = False, extra_endpoints: list[str] = (), append: str = "",
         devices: tuple = ()) -> RunningVm:
    from kvmpy.machine import Machine, qmp_commands

    cfg = MachineConfig(kernel=build_guest(guest), memory=32 << 20, smp=smp, name=name, serial="stdio",
                        no_reboot=no_reboot, start_paused=start_paused, append=append,
                        debug_exit=DebugExitConfig(0xF4, 4), devices=devices).validate()
    console = BufferBackend()
    machine = Machine(cfg, console=console)
    path = tmpdir / "qmp.sock"
    server = QmpServer(machine, [parse_endpoint(f"unix:{path},server,wait=off")]
                       + [parse_endpoint(e) for e in extra_endpoints], qmp_commands())
    server.start()
    vm = RunningVm(machine, console, server, path)

    def run() -> None:
        try:
            vm.result.append(machine.run(timeout=120))
        except Exception as exc:  # reported by the test that waits for the exit
            vm.result.append(exc)

    vm.thread = threading.Thread(target=run, name="vm-run", daemon=True)
    vm.thread.start()
    return vm


def teardown(vm: RunningVm) -> None:
    if vm.thread is not None and vm.thread.is_alive():
        vm.machine.lifecycle.request_quit(0)
        vm.thread.join(20)
    vm.server.close()
    vm.machine.close()


@pytest.fixture
def short_tmp():
    d = Path(tempfile.mkdtemp(prefix="kq", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def vm(short_tmp):
    v = boot(short_tmp)
    assert v.console.wait_for(b"counter: addr", 30), v.console.output
    yield v
    teardown(v)


class RawClient:
    """A bare socket client, for what qemu.qmp will not send (malformed JSON, odd ids)."""

    def __init__(self, path: Path, negotiate: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buf = b""
        self.greeting = self.recv()
        if negotiate:
            self.send(b'{"execute": "qmp_capabilities"}')
            assert self.recv() == {"return": {}}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")  # one message per line, like every QMP client

    def recv(self, skip_events: bool = True) -> dict:
        import json

        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("server closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            msg = json.loads(line)
            if not (skip_events and "event" in msg):
                return msg

    def cmd(self, execute: str, **kw: Any) -> dict:
        import json

        msg = {"execute": execute}
        msg.update(kw)
        self.send(json.dumps(msg).encode())
        return self.recv()

    def close(self) -> None:
        self.sock.close()


def arun(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def qmp_connect(path: Path, name: str, timeout: float = 10.0):
    """A qemu.qmp client connected to ``path``, retrying for ``timeout`` seconds while the server (QEMU) creates
    its socket."""
    from qemu.qmp import ConnectError, QMPClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        qmp = QMPClient(name)
        try:
            await qmp.connect(str(path))
            return qmp
        except ConnectError:
            await asyncio.sleep(0.05)
    qmp = QMPClient(name)
    await qmp.connect(str(path))
    return qmp


@asynccontextmanager
async def qmp_process(argv: list[str], sock: Path, name: str, env: dict[str, str] | None = None,
                      timeout: float = 10.0):
    """Run ``argv`` (QEMU, or kvmpy as a process) serving QMP on the UNIX socket ``sock`` and yield a qemu.qmp
    client connected to it within ``timeout`` seconds. On leaving, the VMM is told to quit and is reaped (killed
    after 30 s); if the body failed, it is killed at once."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        client = await qmp_connect(sock, name, timeout)
        yield client
        await client.execute("quit")
        try:
            await client.disconnect()
        except EOFError:  # the VMM closed the connection first, as it may after quit
            pass
    except BaseException:
        proc.kill()
        raise
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(pred, timeout: float = 20, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()

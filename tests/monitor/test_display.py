"""The display commands against a running guest with -vnc: query-vnc, change-vnc-password, send-key, HMP
sendkey, input-send-event and screendump, and a VNC viewer typing into the PS/2 keyboard."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient

from kvmpy.config import DebugExitConfig, MachineConfig
from kvmpy.devices.chardev import BufferBackend
from kvmpy.monitor.endpoint import parse_endpoint
from kvmpy.monitor.server import QmpServer
from tests.guests.build import build_guest
from tests.display.rfb_client import RawClient
from tests.monitor.conftest import arun, short_tmp  # noqa: F401  (a fixture)

api = pytest.importorskip("vncdotool.api")

pytestmark = pytest.mark.kvm_host


def free_display() -> int:
    """A VNC display number whose port (5900+N) is free now."""
    for n in range(60, 99):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 5900 + n))
                return n
            except OSError:
                continue
    pytest.skip("no free VNC port")


class Vm:
    def __init__(self, tmp: Path, vnc: str) -> None:
        from kvmpy.machine import Machine, qmp_commands

        cfg = MachineConfig(kernel=build_guest("counter"), memory=32 << 20, name="vnc-test", serial="stdio",
                            debug_exit=DebugExitConfig(0xF4, 4), vnc=vnc).validate()
        self.console = BufferBackend()
        self.machine = Machine(cfg, console=self.console)
        self.path = tmp / "qmp.sock"
        self.server = QmpServer(self.machine, [parse_endpoint(f"unix:{self.path},server,wait=off")], qmp_commands())
        self.server.start()
        self.thread = threading.Thread(target=lambda: self.machine.run(timeout=120), daemon=True)
        self.thread.start()

    @property
    def i8042(self):
        return self.machine.board.devices["i8042"]

    def drain(self) -> list[int]:
        out = []
        while self.i8042.read(4, 1) & 1:
            out.append(self.i8042.read(0, 1))
        return out

    def close(self) -> None:
        self.machine.lifecycle.request_quit(0)
        self.thread.join(20)
        self.server.close()


@pytest.fixture
def vm(short_tmp):  # noqa: F811
    n = free_display()
    v = Vm(short_tmp, f"127.0.0.1:{n},password=on")
    v.display = n
    assert v.console.wait_for(b"counter: addr", 30), v.console.output
    yield v
    v.close()


async def qmp(path: Path, *commands: tuple) -> list:
    client = QMPClient("display")
    await client.connect(str(path))
    out = []
    for name, args in commands:
        try:
            out.append(await client.execute(name, args))
        except ExecuteError as exc:
            out.append(exc.error.error.desc)
    await client.disconnect()
    return out


def test_vnc_password_query_and_typing(vm) -> None:
    port = 5900 + vm.display
    (info,) = arun(qmp(vm.path, ("query-vnc", {})))
    assert info == {"enabled": True, "host": "127.0.0.1", "service": str(port), "family": "ipv4", "auth": "vnc",
                    "clients": []}
    (ok,) = arun(qmp(vm.path, ("change-vnc-password", {"password": "hunter2"})))
    assert ok == {}
    client = api.connect(f"127.0.0.1::{port}", password="hunter2", timeout=30)
    try:
        client.refreshScreen(False)
        assert client.screen.size == (640, 480)  # no display adapter: a blank screen
        assert client.screen.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
        (info,) = arun(qmp(vm.path, ("query-vnc", {})))
        assert [c["host"] for c in info["clients"]] == ["127.0.0.1"]
        client.keyPress("a")
        deadline = time.monotonic() + 10
        got: list[int] = []
        while len(got) < 2 and time.monotonic() < deadline:
            got += vm.drain()
            time.sleep(0.05)
        assert got == [0x1E, 0x9E]  # set 1 through the controller's translation
    finally:
        client.disconnect()


def test_send_key_sendkey_and_input_events(vm) -> None:
    replies = arun(qmp(vm.path,
                       ("send-key", {"keys": [{"type": "qcode", "data": "ctrl"}, {"type": "number", "data": 0x38},
                                              {"type": "qcode", "data": "f1"}], "hold-time": 50}),
                       ("send-key", {"keys": [{"type": "qcode", "data": "nosuchkey"}]}),
                       ("screendump", {"filename": "/dev/null"})))
    assert replies[0] == {}
    assert replies[1] == "Parameter 'data' does not accept value 'nosuchkey'"
    assert replies[2] == "There is no console to take a screendump from"
    time.sleep(0.3)
    assert vm.drain() == [0x1D, 0x38, 0x3B, 0xBB, 0xB8, 0x9D]
    (out, bad) = arun(qmp(vm.path, ("human-monitor-command", {"command-line": "sendkey ctrl-alt-delete 10"}),
                          ("human-monitor-command", {"command-line": "sendkey ctrl-foo"})))
    assert (out, bad) == ("", "invalid parameter: foo\r\n")
    time.sleep(0.2)
    assert vm.drain() == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]
    vm.i8042.write(4, 1, 0xD4)
    vm.i8042.write(0, 1, 0xF4)  # enable the mouse's reporting, as psmouse does
    assert vm.drain() == [0xFA]
    events = [{"type": "rel", "data": {"axis": "x", "value": 4}}, {"type": "rel", "data": {"axis": "y", "value": 2}},
              {"type": "btn", "data": {"down": True, "button": "left"}},
              {"type": "abs", "data": {"axis": "x", "value": 100}}]
    (ok,) = arun(qmp(vm.path, ("input-send-event", {"events": events})))
    assert ok == {}
    assert vm.drain() == [0x29, 4, 0xFE]


def test_without_vnc_query_vnc_says_disabled(short_tmp) -> None:  # noqa: F811
    v = Vm(short_tmp, "none")
    try:
        assert v.console.wait_for(b"counter: addr", 30)
        (info, pw, text) = arun(qmp(v.path, ("query-vnc", {}), ("change-vnc-password", {"password": "x"}),
                                    ("human-monitor-command", {"command-line": "info vnc"})))
        assert info == {"enabled": False}
        assert pw == "Could not set password"
        assert text == "None\r\n"
    finally:
        v.close()


# One script for both programs; QEMU runs with -machine none -vga none (no console, no keyboard needed
# for the error paths), kvmpy with the counter guest. Port numbers are replaced before comparing.
DIFF_SCRIPT = [
    ("query-vnc", {}),
    ("change-vnc-password", {"password": "x"}),
    ("human-monitor-command", {"command-line": "info vnc"}),
    ("human-monitor-command", {"command-line": "sendkey"}),
    ("human-monitor-command", {"command-line": "sendkey a 5x"}),
    ("human-monitor-command", {"command-line": "sendkey ctrl-foo"}),
    ("send-key", {"keys": []}),
    ("send-key", {"keys": [{"type": "number", "data": 1000}]}),
    ("send-key", {"keys": [{"type": "qcode", "data": "nosuchkey"}]}),
    ("input-send-event", {"events": [{"type": "btn", "data": {"down": True, "button": "bogus"}}]}),
    ("screendump", {"filename": "/dev/null", "format": "bmp"}),
    ("screendump", {"filename": "/dev/null"}),
]


def _normalized(replies: list, ports: list[int]) -> list:
    text = repr(replies)
    for i, port in enumerate(ports):
        text = text.replace(str(port), f"PORT{i}")
    return eval(text)  # noqa: S307 (our own repr of JSON values)


def _run_script(qmp_path: Path, vnc_port: int) -> list:
    deadline = time.monotonic() + 30
    while True:  # QEMU opens its QMP socket before its VNC server listens
        try:
            viewer = RawClient(("127.0.0.1", vnc_port))
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the VNC server did not start"
            time.sleep(0.1)
    try:
        replies = arun(qmp(qmp_path, *DIFF_SCRIPT))
        return _normalized(replies, [vnc_port, viewer.sock.getsockname()[1]])
    finally:
        viewer.close()


def test_replies_match_qemu(short_tmp) -> None:  # noqa: F811
    n = free_display()
    v = Vm(short_tmp, f"127.0.0.1:{n}")
    try:
        assert v.console.wait_for(b"counter: addr", 30)
        ours = _run_script(v.path, 5900 + n)
    finally:
        v.close()
    m = free_display()
    sock = short_tmp / "qemu.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-vga", "none", "-display",
                             "none", "-vnc", f"127.0.0.1:{m}", "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        theirs = _run_script(sock, 5900 + m)
    finally:
        qemu.kill()
        qemu.wait(10)
    assert ours == theirs

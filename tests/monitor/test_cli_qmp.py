"""`kvmpy -qmp ...` end to end as a management script sees it, and the same script against real QEMU.

The differential test runs one qemu.qmp script against ``qemu-system-x86_64
-enable-kvm`` and against kvmpy with the same guest and flags, and compares
the reply shapes (keys and value types) command by command.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient

from tests.guests.build import build_guest
from tests.guests.runner import REPO
from tests.monitor.conftest import arun

pytestmark = pytest.mark.kvm_host
FLAGS = ["-enable-kvm", "-m", "32", "-smp", "2", "-display", "none", "-nodefaults", "-serial", "none",
         "-name", "shapes"]


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


async def _connect(sock: Path, timeout: float = 30) -> QMPClient:
    end = time.monotonic() + timeout
    while True:
        qmp = QMPClient("cli-test")
        try:
            await qmp.connect(str(sock))
            return qmp
        except Exception:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


async def _bye(qmp: QMPClient) -> None:
    """Disconnect after quit: the server has already hung up, with QEMU as with kvmpy."""
    try:
        await qmp.disconnect()
    except EOFError:
        pass


def test_script_starts_queries_pauses_resumes_resets_and_quits(short_tmp: Path) -> None:
    sock = short_tmp / "q.sock"
    proc = _spawn([sys.executable, "-m", "kvmpy", *FLAGS, "-S", "-kernel", str(build_guest("counter")),
                   "-qmp", f"unix:{sock},server"])  # no wait=off: kvmpy waits for us before starting

    async def script() -> list[str]:
        qmp = await _connect(sock)
        seen: list[str] = []
        with qmp.listener() as events:
            assert (await qmp.execute("query-status"))["status"] == "prelaunch"
            await qmp.execute("cont")
            assert (await qmp.execute("query-status"))["status"] == "running"
            await qmp.execute("stop")
            assert (await qmp.execute("query-status"))["status"] == "paused"
            await qmp.execute("cont")
            await qmp.execute("system_reset")
            await qmp.execute("quit")
            while "SHUTDOWN" not in seen:
                seen.append((await asyncio.wait_for(events.get(), 20))["event"])
        await _bye(qmp)
        return seen

    try:
        seen = arun(script())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen == ["RESUME", "STOP", "RESUME", "RESET", "SHUTDOWN"]
    assert proc.returncode == 0, err.decode()
    assert f"waiting for connection on: unix:{sock},server=on" in err.decode()
    assert not sock.exists()


def test_bad_qmp_specs_are_one_line_usage_errors(short_tmp: Path) -> None:
    kernel = str(build_guest("counter"))
    for spec, words in [("unix:/tmp/x.sock", "add ',server'"), ("pipe:foo,server", "expected unix:PATH"),
                        ("tcp:localhost:99999,server", "out of range"), ("unix:/x,server,bogus=1", "bogus"),
                        (f"unix:{short_tmp}/{'a' * 120},server", "longer than")]:
        p = subprocess.run([sys.executable, "-m", "kvmpy", *FLAGS, "-kernel", kernel, "-qmp", spec],
                           capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert p.returncode == 2, (spec, p.stderr)
        lines = p.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (spec, lines)


def test_yaml_qmp_key(short_tmp: Path) -> None:
    sock = short_tmp / "y.sock"
    yml = short_tmp / "m.yaml"
    yml.write_text(f"kernel: {build_guest('counter')}\nmemory: 32M\nserial: none\nname: from-yaml\n"
                   f"qmp: unix:{sock},server,wait=off\n")
    proc = _spawn([sys.executable, "-m", "kvmpy", "run", str(yml)])

    async def script() -> dict:
        qmp = await _connect(sock)
        name = await qmp.execute("query-name")
        await qmp.execute("quit")
        await _bye(qmp)
        return name

    try:
        assert arun(script()) == {"name": "from-yaml"}
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _shape(value):
    """Keys and JSON types, not values: what a management tool relies on."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


SHAPE_SCRIPT = [("query-version", None), ("query-status", None), ("query-kvm", None), ("query-name", None),
                ("query-cpus-fast", None), ("query-memory-size-summary", None),
                ("stop", None), ("query-status", None), ("cont", None),
                ("human-monitor-command", {"command-line": "info status"}),
                ("human-monitor-command", {"command-line": "xp /8xb 0x100000"}),
                ("human-monitor-command", {"command-line": "xp /3xw 0x100010"}),
                ("human-monitor-command", {"command-line": "xp /2dh 0x100000"}),
                ("human-monitor-command", {"command-line": "xp /3ub 0x100004"}),
                ("human-monitor-command", {"command-line": "xp /2og 0x100000"}),
                ("human-monitor-command", {"command-line": "xp /4cb 0x100000"}),
                ("human-monitor-command", {"command-line": "info kvm"}),
                ("human-monitor-command", {"command-line": "info name"}),
                ("human-monitor-command", {"command-line": "bogus"}),
                ("no-such-command", None), ("query-status", {"x": 1}),
                ("human-monitor-command", {"command-line": 1})]


async def _shape_run(sock: Path) -> list:
    qmp = await _connect(sock)
    out = []
    with qmp.listener(("STOP", "RESUME")) as events:
        for cmd, args in SHAPE_SCRIPT:
            try:
                out.append(("return", await qmp.execute(cmd, args)))
            except ExecuteError as exc:
                out.append(("error", {"class": exc.error.error.class_, "desc": exc.error.error.desc}))
        evs = [await asyncio.wait_for(events.get(), 10) for _ in range(2)]
    out.append(("events", [(e["event"], sorted(e), sorted(e["timestamp"])) for e in evs]))
    await qmp.execute("quit")
    await _bye(qmp)
    return out


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_reply_shapes_match_real_qemu(short_tmp: Path) -> None:
    kernel = str(build_guest("counter"))
    results = {}
    for who, argv in [("qemu", ["qemu-system-x86_64"]), ("kvmpy", [sys.executable, "-m", "kvmpy"])]:
        sock = short_tmp / f"{who}.sock"
        proc = _spawn([*argv, *FLAGS, "-kernel", kernel, "-qmp", f"unix:{sock},server=on,wait=off"])
        try:
            time.sleep(0.5)  # let the guest get past its loader so 1 MiB holds the kernel
            results[who] = arun(_shape_run(sock))
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    q, k = results["qemu"], results["kvmpy"]
    assert len(q) == len(k)
    for (cmd, _), qr, kr in zip(SHAPE_SCRIPT + [("events", None)], q, k):
        assert qr[0] == kr[0], (cmd, qr, kr)
        if cmd == "query-version":
            assert kr[1]["qemu"]["major"] == 7 == qr[1]["qemu"]["major"]  # both speak 7.2
            assert kr[1]["qemu"]["minor"] == 2 == qr[1]["qemu"]["minor"]
        if cmd == "human-monitor-command" or qr[0] == "error":
            assert kr == qr, cmd  # HMP text and error texts are byte-identical
        elif cmd == "query-cpus-fast":
            assert [dict(c, **{"thread-id": 0}) for c in kr[1]] == [dict(c, **{"thread-id": 0}) for c in qr[1]]
        else:
            assert _shape(kr[1]) == _shape(qr[1]), (cmd, qr, kr)


async def _shutdown_event(sock: Path, proc: subprocess.Popen, signum: int) -> dict:
    qmp = await _connect(sock)
    with qmp.listener("SHUTDOWN") as events:
        assert (await qmp.execute("query-status"))["status"] == "running"
        proc.send_signal(signum)
        event = await asyncio.wait_for(events.get(), 20)
    await _bye(qmp)
    return event["data"]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("signum", [15, 1, 2])
def test_a_signal_ends_the_vm_as_it_ends_qemu(short_tmp: Path, signum: int) -> None:
    kernel = str(build_guest("counter"))
    seen = {}
    for who, argv in [("qemu", ["qemu-system-x86_64"]), ("kvmpy", [sys.executable, "-m", "kvmpy"])]:
        sock = short_tmp / f"{who}-sig.sock"
        proc = _spawn([*argv, *FLAGS, "-kernel", kernel, "-qmp", f"unix:{sock},server=on,wait=off"])
        try:
            data = arun(_shutdown_event(sock, proc, signum))
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        seen[who] = (data, proc.returncode, f"terminating on signal {signum}" in err.decode())
    assert seen["kvmpy"] == seen["qemu"] == ({"guest": False, "reason": "host-signal"}, 0, True)

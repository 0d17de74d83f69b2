"""The QMP server against a running kvmpy guest, driven by the real qemu.qmp client (and raw sockets)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest
from qemu.qmp import ExecuteError, QMPClient

from tests.monitor.conftest import RawClient, arun, boot, teardown, wait_until

pytestmark = pytest.mark.kvm_host


async def _client(path) -> QMPClient:
    qmp = QMPClient("kvmpy-test")
    await qmp.connect(str(path))
    return qmp


def test_handshake_and_queries(vm) -> None:
    async def go() -> None:
        qmp = await _client(vm.path)
        g = qmp.greeting
        assert g is not None
        version = g.QMP.version
        assert version["qemu"] == {"major": 7, "minor": 2, "micro": 0}
        assert version["package"].startswith("kvmpy")
        assert list(g.QMP.capabilities) == []
        assert await qmp.execute("query-version") == version
        names = {c["name"] for c in await qmp.execute("query-commands")}
        assert {"qmp_capabilities", "query-version", "query-commands", "query-status", "stop", "cont",
                "system_reset", "system_powerdown", "quit", "query-cpus-fast", "query-kvm", "query-name",
                "query-memory-size-summary", "human-monitor-command"} <= names
        assert await qmp.execute("query-status") == {"status": "running", "singlestep": False, "running": True}
        cpus = await qmp.execute("query-cpus-fast")
        assert cpus == [{"thread-id": vm.machine.board.threads[0].native_id, "cpu-index": 0, "target": "x86_64",
                         "qom-path": "/machine/unattached/device[0]",
                         "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}}]
        assert cpus[0]["thread-id"] != os.getpid()
        assert await qmp.execute("query-kvm") == {"enabled": True, "present": True}
        assert await qmp.execute("query-name") == {"name": "qmp-test"}
        assert await qmp.execute("query-memory-size-summary") == {"base-memory": 32 << 20, "plugged-memory": 0}
        await qmp.disconnect()

    arun(go())
    assert stat.S_IMODE(os.stat(vm.path).st_mode) == 0o600


def test_stop_freezes_the_counter_and_cont_resumes_it(vm) -> None:
    async def go() -> None:
        qmp = await _client(vm.path)
        assert wait_until(lambda: vm.count() > 0)
        with qmp.listener(("STOP", "RESUME")) as events:
            assert await qmp.execute("stop") == {}
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev["event"] == "STOP" and "data" not in ev
            ts = ev["timestamp"]
            assert abs(ts["seconds"] + ts["microseconds"] / 1e6 - time.time()) < 5
            assert 0 <= ts["microseconds"] < 1_000_000
            assert await qmp.execute("query-status") == {"status": "paused", "singlestep": False,
                                                         "running": False}
            frozen = vm.count()
            regs = bytes(vm.machine.board.vcpus[0].get_raw("regs"))
            await asyncio.sleep(0.6)
            assert vm.count() == frozen  # not one increment while stopped
            assert bytes(vm.machine.board.vcpus[0].get_raw("regs")) == regs
            # A second stop is accepted and changes nothing (no second STOP event), as in QEMU.
            assert await qmp.execute("stop") == {}
            assert await qmp.execute("cont") == {}
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev["event"] == "RESUME"
            assert events.empty()
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(wait_until, lambda: vm.count() > frozen + 1000, 10)
        assert (await qmp.execute("query-status"))["running"] is True
        await qmp.disconnect()

    arun(go())


def test_system_reset_restarts_the_guest_and_emits_reset(vm) -> None:
    async def go() -> None:
        qmp = await _client(vm.path)
        with qmp.listener("RESET") as events:
            assert await qmp.execute("system_reset") == {}
            ev = await asyncio.wait_for(events.get(), 10)
        assert ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        # The guest starts over: it prints its banner again and its counter restarts from 0.
        assert await asyncio.to_thread(lambda: wait_until(lambda: vm.console.output.count(b"counter: addr") == 2))
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.disconnect()

    arun(go())


def test_system_powerdown_without_acpi_is_an_error(vm) -> None:
    async def go() -> None:
        qmp = await _client(vm.path)
        with pytest.raises(ExecuteError) as info:
            await qmp.execute("system_powerdown")
        assert info.value.error.error.class_ == "GenericError"
        assert "ACPI" in info.value.error.error.desc
        await qmp.disconnect()

    arun(go())


def test_errors_use_qemus_classes(vm) -> None:
    async def go() -> None:
        qmp = await _client(vm.path)
        cases = [("no-such-command", None, "CommandNotFound", "The command no-such-command has not been found"),
                 ("query-status", {"bogus": 1}, "GenericError", "Parameter 'bogus' is unexpected"),
                 ("human-monitor-command", {}, "GenericError", "Parameter 'command-line' is missing"),
                 ("human-monitor-command", {"command-line": 5}, "GenericError",
                  "Invalid parameter type for 'command-line', expected: string"),
                 ("qmp_capabilities", None, "CommandNotFound",
                  "Capabilities negotiation is already complete, command ignored")]
        for cmd, args, cls, desc in cases:
            with pytest.raises(ExecuteError) as info:
                await qmp.execute(cmd, args)
            assert (info.value.error.error.class_, info.value.error.error.desc) == (cls, desc)
        await qmp.disconnect()

    arun(go())


def test_raw_protocol_ids_malformed_input_and_negotiation(vm) -> None:
    c = RawClient(vm.path, negotiate=False)
    assert set(c.greeting["QMP"]) == {"version", "capabilities"}
    assert c.cmd("query-status", id=1) == {"id": 1, "error": {
        "class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    assert c.cmd("qmp_capabilities", arguments={"enable": ["oob"]})["error"]["desc"] == \
        "Capability 'oob' not available"
    assert c.cmd("qmp_capabilities", id="x") == {"return": {}, "id": "x"}
    # Any JSON value is a valid id and comes back exactly.
    for ident in ["abc", 7, 1.5, None, [1, {"a": "b"}], {"nested": {"x": [True, False]}}, "ünï"]:
        assert c.cmd("query-kvm", id=ident) == {"return": {"enabled": True, "present": True}, "id": ident}
    assert c.cmd("nope", id={"k": 1})["id"] == {"k": 1}
    # Malformed input gets an error; the connection stays usable.
    for junk, desc in [(b'{"execute": "query-kvm",}', "JSON parse error"),
                       (b"[1, 2]", "QMP input must be a JSON object"),
                       (b'"hello"', "QMP input must be a JSON object"),
                       (b"}", "JSON parse error"),
                       (b'{"execute": 1}', "QMP input member 'execute' must be a string"),
                       (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
                       (b'{"execute": "query-kvm", "arguments": []}', "QMP input member 'arguments' must be an object"),
                       (b'{"execute": "query-kvm", "extra": 1}', "QMP input member 'extra' is unexpected"),
                       (b'{"execute": "query-kvm\x01"}', "JSON parse error"),
                       (b'{"execute": "\xc3("}', "JSON parse error")]:
        c.send(junk)
        reply = c.recv()
        assert reply["error"]["class"] == "GenericError" and reply["error"]["desc"].startswith(desc), (junk, reply)
    # Messages split across writes, several per write, with no newlines at all.
    c.sock.sendall(b'{"execute": "query-')
    time.sleep(0.05)
    c.sock.sendall(b'name", "id": 1}{"execute": "query-kvm", "id": 2}')
    assert c.recv()["id"] == 1 and c.recv()["id"] == 2
    # Deep nesting and oversized messages are refused without harm.
    c.send(b"[" * 5000 + b"]" * 5000)
    assert c.recv()["error"]["class"] == "GenericError"
    c.send(b'{"execute": "query-kvm", "arguments": {"x": "' + b"a" * (2 << 20) + b'"}}')
    assert "longer than" in c.recv()["error"]["desc"]
    # A half-sent message is abandoned with a 0xff byte, which resets the parser (QEMU's idiom).
    c.sock.sendall(b'{"execute": "query-name", "argu')
    time.sleep(0.05)
    c.sock.sendall(b'\xff{"execute": "query-kvm", "id": 3}')
    err = c.recv()["error"]
    assert err["class"] == "GenericError" and err["desc"].startswith("JSON parse error")
    assert c.recv()["id"] == 3
    assert c.cmd("query-name", id=9) == {"return": {"name": "qmp-test"}, "id": 9}
    c.close()
    # The VM never noticed.
    assert vm.machine.lifecycle.state.value == "running"
    before = vm.count()
    assert wait_until(lambda: vm.count() != before, 10)


def test_two_clients_at_once_both_get_events(vm) -> None:
    async def go() -> None:
        a, b = await _client(vm.path), await _client(vm.path)
        with a.listener("STOP") as ea, b.listener("STOP") as eb:
            r1, r2 = await asyncio.gather(a.execute("query-status"), b.execute("query-name"))
            assert r1["running"] and r2 == {"name": "qmp-test"}
            await a.execute("stop")
            assert (await asyncio.wait_for(ea.get(), 5))["event"] == "STOP"
            assert (await asyncio.wait_for(eb.get(), 5))["event"] == "STOP"
        assert (await b.execute("query-status"))["status"] == "paused"
        await b.execute("cont")
        await a.disconnect()
        assert (await b.execute("query-status"))["status"] == "running"
        await b.disconnect()

    arun(go())


def test_quit_replies_then_shuts_down_with_an_event(vm) -> None:
    async def go() -> dict:
        qmp = await _client(vm.path)
        with qmp.listener("SHUTDOWN") as events:
            assert await qmp.execute("quit") == {}
            ev = await asyncio.wait_for(events.get(), 10)
        await qmp.disconnect()
        return ev

    ev = arun(go())
    assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert vm.wait_exit() == 0
    assert vm.machine.lifecycle.state.value == "shutdown"


def test_start_paused_is_prelaunch_until_cont(short_tmp) -> None:
    vm = boot(short_tmp, start_paused=True)
    try:
        async def go() -> None:
            qmp = await _client(vm.path)
            assert await qmp.execute("query-status") == {"status": "prelaunch", "singlestep": False,
                                                         "running": False}
            assert "VM status: paused (prelaunch)" in await qmp.execute(
                "human-monitor-command", {"command-line": "info status"})
            await asyncio.sleep(0.3)
            assert b"counter" not in vm.console.output  # not one instruction ran
            with qmp.listener("RESUME") as events:
                await qmp.execute("cont")
                await asyncio.wait_for(events.get(), 5)
            assert await asyncio.to_thread(vm.console.wait_for, b"counter: addr", 30)
            assert (await qmp.execute("query-status"))["status"] == "running"
            await qmp.disconnect()

        arun(go())
    finally:
        teardown(vm)


def test_guest_poweroff_and_guest_reset_events(short_tmp) -> None:
    # The demo guest resets itself through the i8042; with -no-reboot that ends the VM with SHUTDOWN.
    vm = boot(short_tmp, guest="demo", start_paused=True, no_reboot=True, append="cols=20 rows=5 iters=5")
    try:
        async def go() -> dict:
            qmp = await _client(vm.path)
            with qmp.listener("SHUTDOWN") as events:
                await qmp.execute("cont")
                ev = await asyncio.wait_for(events.get(), 60)
            await qmp.disconnect()
            return ev

        ev = arun(go(), 90)
        assert ev["data"] == {"guest": True, "reason": "guest-reset"}
        assert vm.wait_exit() == 0
    finally:
        teardown(vm)


def test_tcp_endpoint_binds_loopback(short_tmp) -> None:
    vm = boot(short_tmp, extra_endpoints=["tcp::0,server,wait=off"])
    try:
        host, port = vm.server.addresses[1][:2]
        assert host == "127.0.0.1" and port > 0

        async def go() -> None:
            qmp = QMPClient("tcp")
            await qmp.connect((host, port))
            assert (await qmp.execute("query-kvm"))["enabled"]
            await qmp.disconnect()

        arun(go())
    finally:
        teardown(vm)
    assert not vm.path.exists()  # the UNIX socket is removed on close

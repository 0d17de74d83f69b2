"""query-block, query-blockstats, info block and block_resize: kvmpy against QEMU 7.2 on the same images and command line."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from tests.monitor.conftest import arun, qmp_connect

pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None,
                                 reason="needs qemu-system-x86_64 and qemu-img")]
MiB = 1 << 20
RESIZES = [{"device": "d1", "size": 2 * MiB}, {"device": "nope", "size": MiB}, {"device": "d0", "size": MiB + 1},
           {"device": "d0", "size": -1}, {"size": MiB}, {"node-name": "n2", "size": 3 * MiB},
           {"device": "d0", "size": 2 * MiB}]
QUERIES: list[tuple[str, dict]] = [("query-block", {}), ("query-blockstats", {}),
                                   ("human-monitor-command", {"command-line": "info block"}),
                                   ("human-monitor-command", {"command-line": "info block d1"}),
                                   ("human-monitor-command", {"command-line": "info blockstats"}),
                                   *[("block_resize", a) for a in RESIZES],
                                   ("query-block", {})]


def args_for(d: Path) -> list[str]:
    return ["-drive", f"file={d / 'top.qcow2'},format=qcow2,if=none,id=d0,cache=none",
            "-device", "virtio-blk-pci,drive=d0,serial=SER123,id=vd0",
            "-drive", f"file={d / 'r.img'},format=raw,if=virtio,readonly=on,id=d1",
            "-blockdev", f"driver=file,filename={d / 'r2.img'},node-name=f2",
            "-blockdev", "driver=raw,file=f2,node-name=n2", "-device", "virtio-blk-pci,drive=n2,id=vd2",
            *[a for m in ("writethrough", "directsync", "unsafe")
              for a in ("-drive", f"file={d / (m + '.img')},format=raw,if=virtio,cache={m},id=c{m}")]]


def make_images(d: Path) -> None:
    def img(*a: object) -> None:
        subprocess.run(["qemu-img", *map(str, a)], check=True, capture_output=True)
    img("create", "-f", "qcow2", d / "base.qcow2", "1M")
    img("create", "-f", "qcow2", "-b", d / "base.qcow2", "-F", "qcow2", d / "top.qcow2")
    for name in ("r.img", "r2.img", "writethrough.img", "directsync.img", "unsafe.img"):
        img("create", "-f", "raw", d / name, "1M")


async def ask(path: Path) -> list[Any]:
    qmp = await qmp_connect(path, "block-test")
    out: list[Any] = []
    for name, arguments in QUERIES:
        try:
            out.append(await qmp.execute(name, arguments))
        except ExecuteError as exc:
            out.append(("error", exc.error_class, str(exc)))
    await qmp.disconnect()
    return out


def normalise(value: Any) -> Any:
    """Automatic node names (#blockNNN) differ between runs of QEMU itself; idle times are clocks."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k != "idle_time_ns"}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"#block\d+", "#block", re.sub(r"idle_time_ns=\d+", "idle_time_ns=", value))
    return value


def qemu_answers(d: Path, sock: Path) -> list[Any]:
    qemu = subprocess.Popen(["qemu-system-x86_64", "-M", "pc", "-nodefaults", "-display", "none", "-accel", "tcg",
                             "-S", "-qmp", f"unix:{sock},server=on,wait=off", *args_for(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=d)
    try:
        return arun(ask(sock))
    finally:
        qemu.kill()
        qemu.wait()


def kvmpy_answers(d: Path, sock: Path) -> list[Any]:
    from kvmpy.cli import parse_qemu_args
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.machine import Machine, qmp_commands
    from kvmpy.monitor.endpoint import parse_endpoint
    from kvmpy.monitor.server import QmpServer
    from tests.guests.build import build_guest

    cfg = parse_qemu_args(["-enable-kvm", "-S", "-m", "32", "-kernel", str(build_guest("counter")), *args_for(d)])
    machine = Machine(cfg, console=BufferBackend())
    server = QmpServer(machine, [parse_endpoint(f"unix:{sock},server,wait=off")], qmp_commands())
    server.start()
    runner = threading.Thread(target=machine.run, kwargs={"timeout": 120}, daemon=True)
    runner.start()
    try:
        return arun(ask(sock))
    finally:
        machine.lifecycle.request_quit(0)
        runner.join(20)
        server.close()
        machine.close()


def test_block_queries_and_resize_match_qemu(tmp_path: Path, short_tmp: Path) -> None:
    make_images(tmp_path)
    theirs = normalise(qemu_answers(tmp_path, short_tmp / "qemu.sock"))
    make_images(tmp_path)  # the resizes changed them
    ours = normalise(kvmpy_answers(tmp_path, short_tmp / "kvmpy.sock"))
    for (name, arguments), mine, qemus in zip(QUERIES, ours, theirs, strict=True):
        assert mine == qemus, (name, arguments)


def test_kvmpy_refuses_an_image_a_running_qemu_writes(tmp_path: Path, short_tmp: Path) -> None:
    from kvmpy.cli import parse_qemu_args
    from kvmpy.errors import ConfigError
    from kvmpy.machine import Machine
    from tests.guests.build import build_guest

    make_images(tmp_path)
    sock = short_tmp / "q.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-M", "pc", "-nodefaults", "-display", "none", "-accel", "tcg",
                             "-S", "-qmp", f"unix:{sock},server=on,wait=off",
                             "-drive", f"file={tmp_path / 'r2.img'},format=raw,if=virtio"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        arun(asyncio.wait_for(_wait_for(sock), 20))
        cfg = parse_qemu_args(["-enable-kvm", "-S", "-m", "32", "-kernel", str(build_guest("counter")),
                               "-drive", f"file={tmp_path / 'r2.img'},format=raw,if=virtio"])
        with pytest.raises(ConfigError) as e:
            Machine(cfg)
        assert str(e.value) == (f"-drive file={tmp_path / 'r2.img'},format=raw,if=virtio: "
                                'Failed to get "write" lock\n'
                                f"Is another process using the image [{tmp_path / 'r2.img'}]?")
    finally:
        qemu.kill()
        qemu.wait()


async def _wait_for(sock: Path) -> None:
    while not sock.exists():
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)

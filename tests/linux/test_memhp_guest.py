"""Memory hotplug with a real Linux guest: kvmpy and qemu-system-x86_64 run the same QMP script.

Both boot Debian's kernel with ``-m 256M,slots=4,maxmem=4G`` and a DIMM present
at start, then over qemu.qmp: object-add + device_add a 512 MiB DIMM (the guest's
MemTotal grows and it fills more memory than it booted with), the error cases
(busy memdev, duplicate object, bad slot, maxmem exceeded, object in use), the
queries, and device_del, which the guest honours (DEVICE_DELETED). The replies and
the ACPI/device events must be the same under both. The time from device_add to
the guest's _OST (memory online) is printed for each. The DIMM present at start is
a ``memory-backend-file`` with ``share=on``: the test reads the guest's writes in its file.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.linux.guest_process import GuestProcess

MiB = 1 << 20
BOOT_TIMEOUT = 300.0
FILL_TIMEOUT = 600.0  # 312 MiB into fresh guest pages: 96 s in a loaded bed, over 300 s in a batch beside three host sessions
FILL_MARGIN_MIB = 32  # the fill exceeds the guest's MemTotal at boot by this much
REPO = Path(__file__).resolve().parents[2]
SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("object-add", {"qom-type": "memory-backend-ram", "id": "mem1", "size": 512 * MiB}),
    ("device_add", {"driver": "pc-dimm", "id": "dimm1", "memdev": "mem1"}),
    # the error cases: none may disturb the running guest
    ("device_add", {"driver": "pc-dimm", "id": "dimm2", "memdev": "mem1"}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "mem1", "size": 128 * MiB}),
    ("object-add", {"qom-type": "memory-backend-ram", "id": "big", "size": 3400 * MiB}),  # L1 has 4 GiB
    ("device_add", {"driver": "pc-dimm", "id": "dbig", "memdev": "big"}),  # maxmem exceeded
    ("object-add", {"qom-type": "memory-backend-ram", "id": "m3", "size": 128 * MiB}),
    ("device_add", {"driver": "pc-dimm", "id": "d3", "memdev": "m3", "slot": 9}),
    ("device_add", {"driver": "pc-dimm", "id": "d3", "memdev": "nosuch"}),
    ("object-del", {"id": "mem1"}),
    ("query-memory-devices", {}),
    ("query-memory-size-summary", {}),
]


def run(g: GuestProcess, command: str, tag: str, timeout: float = 120) -> str:
    """Run a shell command in the guest; returns the console text from the command's echo up to the unique tag."""
    start = len(g.out)
    g.send(f"{command}; echo {tag}-END-$((6*7))\n")  # the echo shows $((6*7)): only the output matches
    m = g.expect(rf"{tag}-END-42", timeout)
    return bytes(g.out[start:m.start()]).decode("latin-1")


def memtotal_kib(g: GuestProcess, tag: str) -> int:
    out = run(g, "grep MemTotal /proc/meminfo", tag)
    return int(re.search(r"MemTotal:\s+(\d+) kB", out).group(1))  # type: ignore[union-attr]


def fill_md5(g: GuestProcess, tag: str) -> str:
    """The md5 of the guest's fill file, /mnt/f."""
    return re.search(r"([0-9a-f]{32})  /mnt/f", run(g, "md5sum /mnt/f", tag)).group(1)  # type: ignore[union-attr]


def fill_command(mib: int) -> str:
    """Fill a tmpfs with ``mib`` MiB of the marker text: 1 MiB made once, then copied by one cat (busybox's
    head -c goes byte by byte: 400 MiB of it took over 300 s in a guest of the nested bed)."""
    return ("mkdir -p /mnt && mount -t tmpfs -o size=700M fill /mnt && yes KVMPYSHARED | head -c 1048576 > /mnt/blk; "
            f"set --; i=0; while [ $i -lt {mib} ]; do set -- \"$@\" /mnt/blk; i=$((i+1)); done; "
            "cat \"$@\" > /mnt/f; rc=$?; set --; echo FILLED $(du -m /mnt/f | cut -f1) rc=$rc; "
            "grep -E '^(MemTotal|MemFree|Shmem):' /proc/meminfo")


async def qmp_script(sock: Path) -> tuple[list[Any], list[Any], dict[str, float]]:
    from qemu.qmp import ExecuteError, QMPClient

    client = QMPClient("memhp-test")
    for _ in range(200):
        try:
            await client.connect(str(sock))
            break
        except Exception:
            await asyncio.sleep(0.1)
    replies: list[Any] = []
    events: list[Any] = []
    times: dict[str, float] = {}
    async def listen() -> None:
        async for ev in client.events:
            if ev["event"] in ("ACPI_DEVICE_OST", "DEVICE_DELETED"):
                events.append((ev["event"], ev.get("data")))
                times.setdefault(ev["event"], time.monotonic())
    listener = asyncio.ensure_future(listen())
    for name, args in SCRIPT:
        if name == "device_add" and "t_add" not in times:
            times["t_add"] = time.monotonic()
        try:
            replies.append((name, "return", await client.execute(name, args)))
        except ExecuteError as exc:
            replies.append((name, exc.error.error.class_, exc.error.error.desc))
    for _ in range(600):  # the guest's _OST for the new DIMM: it is online
        if "ACPI_DEVICE_OST" in times:
            break
        await asyncio.sleep(0.1)
    listener.cancel()
    await client.disconnect()
    return replies, events, times


async def qmp_unplug(sock: Path) -> tuple[list[Any], list[Any]]:
    from qemu.qmp import QMPClient

    client = QMPClient("memhp-test")
    await client.connect(str(sock))
    events: list[Any] = []
    replies = [await client.execute("device_del", {"id": "dimm1"})]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ev = await asyncio.wait_for(client.events.get(), timeout=1)
        except asyncio.TimeoutError:
            continue
        if ev["event"] in ("ACPI_DEVICE_OST", "DEVICE_DELETED"):
            events.append((ev["event"], ev.get("data")))
        if ev["event"] == "DEVICE_DELETED":
            break
    replies.append(await client.execute("query-memory-devices"))
    replies.append(await client.execute("query-memory-size-summary"))
    await client.execute("quit")
    try:
        await client.disconnect()
    except EOFError:  # the VM hangs up after answering quit, as QEMU does; qemu.qmp reports it if that wins the race
        pass
    return replies, events


def scenario(argv: list[str], sock: Path, shared: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    g = GuestProcess(argv, cwd=sock.parent, env=env)
    try:
        g.expect("KVMPY-TEST cmdline=", BOOT_TIMEOUT)
        before = memtotal_kib(g, "MT0")
        replies, events, times = asyncio.run(qmp_script(sock))
        after = memtotal_kib(g, "MT1")
        # more than all the memory the guest booted with (its MemTotal, the cold DIMM included), so some of it
        # must be in the hot-added DIMM: tmpfs pages stay in RAM (no swap)
        fill_mib = before // 1024 + FILL_MARGIN_MIB
        t_fill = time.monotonic()
        fill = run(g, fill_command(fill_mib), "FILL", timeout=FILL_TIMEOUT)
        fill_s = time.monotonic() - t_fill
        seen = b"KVMPYSHARED" in shared.read_bytes()  # the cold DIMM's file, shared with this process
        run(g, "rm -f /mnt/f /mnt/blk; umount /mnt", "UNFILL")
        unplug_replies, unplug_events = asyncio.run(qmp_unplug(sock))
        g.wait(60)
        return {"before": before, "after": after, "fill": fill, "fill_mib": fill_mib, "fill_s": fill_s,
                "shared_seen": seen, "replies": replies, "events": events,
                "online_s": times.get("ACPI_DEVICE_OST", float("nan")) - times["t_add"],
                "unplug": unplug_replies, "unplug_events": unplug_events, "output": g.text()}
    finally:
        g.close()


def common_args(kernel: Path, initrd: Path, sock: Path, shared: Path) -> list[str]:
    return ["-enable-kvm", "-m", "256M,slots=4,maxmem=4G", "-smp", "1", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append",
            "console=ttyS0 quiet panic=-1 memhp_default_state=online_movable kvmpy_test=shell",
            "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-object", f"memory-backend-file,id=cold,size=128M,mem-path={shared},share=on",
            "-device", "pc-dimm,id=dcold,memdev=cold",
            "-qmp", f"unix:{sock},server=on,wait=off"]


@pytest.mark.kvm_full
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_hot_add_use_and_remove_a_dimm_like_qemu(linux_assets) -> None:
    results = {}
    with tempfile.TemporaryDirectory(dir="/run" if os.access("/run", os.W_OK) else None) as tmp:
        for vmm in ("kvmpy", "qemu"):
            sock, shared = Path(tmp) / f"{vmm}.sock", Path(tmp) / f"{vmm}-cold.ram"
            args = common_args(linux_assets.kernel, linux_assets.initrd, sock, shared)
            if vmm == "kvmpy":
                env = dict(os.environ, PYTHONPATH=str(REPO))
                results[vmm] = scenario([sys.executable, "-m", "kvmpy", *args], sock, shared, env)
            else:
                results[vmm] = scenario(["qemu-system-x86_64", "-machine", "pc", *args], sock, shared)
    k, q = results["kvmpy"], results["qemu"]
    print(f"\ndevice_add -> guest _OST (memory online): kvmpy {k['online_s']:.3f} s, qemu {q['online_s']:.3f} s")
    print(f"MemTotal kB: kvmpy {k['before']} -> {k['after']}, qemu {q['before']} -> {q['after']}")
    print(f"fill: kvmpy {k['fill_mib']} MiB in {k['fill_s']:.1f} s, qemu {q['fill_mib']} MiB in {q['fill_s']:.1f} s")
    print("reply differences:", [(a, b) for a, b in zip(k["replies"], q["replies"]) if a != b])
    print("events:", k["events"], q["events"], "unplug:", k["unplug"] == q["unplug"], k["unplug_events"],
          q["unplug_events"])
    for r in (k, q):
        assert r["after"] - r["before"] >= 500 * 1024, r["output"][-3000:]  # the 512 MiB DIMM is online
        assert f"FILLED {r['fill_mib']} rc=0" in r["fill"], r["fill"]  # more than all it booted with
        assert r["fill_mib"] * 1024 > r["before"]
        assert r["shared_seen"]  # the guest's writes reached the share=on file the host reads
        assert ("DEVICE_DELETED", {"device": "dimm1", "path": "/machine/peripheral/dimm1"}) in r["unplug_events"], \
            (r["unplug_events"], r["output"][-3000:])
    assert [d["data"]["id"] for d in k["unplug"][1]] == ["dcold"]
    assert abs(k["before"] - q["before"]) < 8 * 1024  # the same RAM at boot (the cold DIMM included) as QEMU
    diffs = [(a, b) for a, b in zip(k["replies"], q["replies"]) if a != b]
    assert diffs == [], diffs
    assert k["events"] == q["events"], (k["events"], q["events"])
    assert k["unplug"] == q["unplug"], (k["unplug"], q["unplug"])
    assert k["unplug_events"] == q["unplug_events"], (k["unplug_events"], q["unplug_events"])


@pytest.mark.kvm_full
def test_a_hot_added_dimm_migrates_with_what_the_guest_wrote_in_it(linux_assets, tmp_path: Path) -> None:
    """Issue 15: migrate a VM after a hot-add. The destination is started with the hot-added object and DIMM on
    its command line, as QEMU requires; the guest's tmpfs, filled past its boot memory (so into the DIMM),
    reads back the same on the destination, which then still takes the DIMM's removal."""
    from kvmpy.migration.migrate_cli import QmpClient

    env = dict(os.environ, PYTHONPATH=str(REPO))
    work = Path(tempfile.mkdtemp(dir="/run" if os.access("/run", os.W_OK) else None))
    src_sock, dst_sock = work / "src.sock", work / "dst.sock"
    src = dst = None
    try:
        src = GuestProcess([sys.executable, "-m", "kvmpy", *common_args(linux_assets.kernel, linux_assets.initrd,
                                                                        src_sock, work / "src-cold.ram")],
                           cwd=work, env=env)
        src.expect("KVMPY-TEST cmdline=", BOOT_TIMEOUT)
        before = memtotal_kib(src, "MT0")
        _, events, _ = asyncio.run(qmp_script(src_sock))
        assert events and events[0][0] == "ACPI_DEVICE_OST", events
        after = memtotal_kib(src, "MT1")
        fill = run(src, fill_command(before // 1024 + FILL_MARGIN_MIB), "FILL", timeout=FILL_TIMEOUT)
        assert "rc=0" in fill, fill
        digest = fill_md5(src, "SUM0")
        port = 46500 + os.getpid() % 500
        dst = GuestProcess([sys.executable, "-m", "kvmpy", *common_args(linux_assets.kernel, linux_assets.initrd,
                                                                        dst_sock, work / "dst-cold.ram"),
                            "-object", "memory-backend-ram,id=mem1,size=512M",
                            "-device", "pc-dimm,id=dimm1,memdev=mem1",
                            "-incoming", f"tcp:127.0.0.1:{port}"], cwd=work, env=env)
        started = time.monotonic()  # kvmpy's start-up (Python, numpy) takes ~3.5 s on the host, far more in L1
        while not dst_sock.exists() and dst.proc.poll() is None and time.monotonic() - started < BOOT_TIMEOUT:
            time.sleep(0.1)
        assert dst_sock.exists(), (f"the destination has no QMP socket after {time.monotonic() - started:.0f} s "
                                   f"(exit status {dst.proc.poll()}): {dst.text()[-3000:]}")
        print(f"\ndestination listening after {time.monotonic() - started:.1f} s")
        src_qmp, dst_qmp = QmpClient(f"unix:{src_sock}", timeout=60), QmpClient(f"unix:{dst_sock}", timeout=60)
        assert dst_qmp.execute("query-status")["status"] == "inmigrate"
        unplugged = {args["id"] for name, args in SCRIPT if name == "object-add"} - {"mem1"}
        for backend in src_qmp.execute("query-memdev"):  # the script's error cases left these unplugged
            if backend.get("id") in unplugged:
                src_qmp.execute("object-del", id=backend["id"])
        begin = time.monotonic()
        src_qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        while (info := src_qmp.execute("query-migrate"))["status"] not in ("completed", "failed", "cancelled"):
            assert time.monotonic() - begin < 300, info
            time.sleep(0.5)
        assert info["status"] == "completed", info
        print(f"\nmigrated after a hot-add: {time.monotonic() - begin:.1f} s, "
              f"downtime {info.get('downtime')} ms, {info['ram']['transferred']} bytes")
        assert dst_qmp.execute("query-status")["status"] == "running"
        assert [d["data"]["id"] for d in dst_qmp.execute("query-memory-devices")] == ["dcold", "dimm1"]
        src_qmp.execute("quit")
        src.wait(60)
        assert memtotal_kib(dst, "MT2") == after
        assert fill_md5(dst, "SUM1") == digest
        run(dst, "rm -f /mnt/f /mnt/blk; umount /mnt", "UNFILL")
        dst_qmp.close()  # qmp_unplug opens its own connection
        _, unplug_events = asyncio.run(qmp_unplug(dst_sock))
        assert ("DEVICE_DELETED", {"device": "dimm1", "path": "/machine/peripheral/dimm1"}) in unplug_events, \
            (unplug_events, dst.text()[-3000:])
        dst.wait(60)
    finally:
        for g in (src, dst):
            if g is not None:
                g.close()
        shutil.rmtree(work, ignore_errors=True)

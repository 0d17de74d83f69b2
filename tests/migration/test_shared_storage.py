"""Migration with the disk on shared storage (the same image file on both sides), locking on, as QEMU does it.

Two Machines in one process, each with a virtio-blk-pci disk over the same qcow2 overlay (with a backing
file), the destination built with ``-incoming``. Guest requests go through the real virtio-pci transport
(``tests.devices.virtio.pci_driver``): the source writes, migrates, the destination writes; the image
must then hold both writes, pass ``qemu-img check`` and leave the backing file untouched. OFD locks are
per open file description, so two Machines in one process refuse each other exactly as two processes do.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from kvmpy.block.errors import BlockError
from kvmpy.devices.virtio.blk import S_OK, T_OUT
from kvmpy.devices.virtio.pci import VirtioPci
from kvmpy.lifecycle import RunState
from kvmpy.migration.destination import Incoming
from kvmpy.migration.source import MigrationSource
from kvmpy.migration.transport import connect, parse_uri
from tests.block.conftest import locks_of
from tests.devices.virtio.pci_driver import BoardPorts, VirtioPciDriver

pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                 reason="needs qemu-img and qemu-io (qemu-utils)")]
QUEUES, HDR, DATA, STATUS = 0x1000000, 0x1100000, 0x1110000, 0x1120000  # above the guest's code and counter
TOP_HELD = {100, 101, 103, 201, 203}  # a read-write qcow2: read, write, resize held; write, resize unshared
BACKING_HELD = {100, 201, 203}


def _img(*args: object) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def _chain(tmp: Path) -> tuple[Path, Path]:
    base, top = tmp / "base.qcow2", tmp / "top.qcow2"
    _img("create", "-f", "qcow2", base, "4M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 4M", str(base)], check=True, capture_output=True)
    _img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    return base, top


def _machine(image: Path, *extra: str):
    """A Machine running the counter guest (forever) with a virtio-blk disk on ``image``; one built with
    -incoming is left parked (INMIGRATE) for an ``Incoming``."""
    from kvmpy.cli import parse_qemu_args
    from kvmpy.devices.chardev import BufferBackend
    from kvmpy.machine import Machine
    from tests.guests.build import build_guest

    cfg = parse_qemu_args(["-enable-kvm", "-m", "32", "-kernel", str(build_guest("counter")),
                           "-drive", f"file={image},if=virtio", *extra])
    m = Machine(cfg, BufferBackend())
    if cfg.incoming:
        m.lifecycle.set_state(RunState.INMIGRATE)
    m.start()
    return m


def _driver(m) -> VirtioPciDriver:
    fn = next(d for d in m.board.devices.values() if isinstance(d, VirtioPci))
    drv = VirtioPciDriver(BoardPorts(m.board), fn)
    drv.init(queue_base=QUEUES)
    return drv


def _write(m, drv: VirtioPciDriver, sector: int, fill: int) -> int:
    """One guest write request of 64 KiB of ``fill`` at ``sector``; returns the request's status byte."""
    q, mem = drv.queues[0], m.board.memory
    mem.write(HDR, struct.pack("<IIQ", T_OUT, 0, sector))
    mem.write(DATA, bytes([fill]) * 65536)
    mem.write(STATUS, b"\xff")
    head = q.add([(HDR, 16), (DATA, 65536)], [(STATUS, 1)])
    drv.kick(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        used = q.get_used()
        if used:
            assert used == [(head, 1)]
            return mem.read(STATUS, 1)[0]
        time.sleep(0.002)
    raise AssertionError("the request was never completed")


def _read_back(image: Path, offset: int, fill: int, length: int = 65536) -> None:
    r = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P {fill} {offset} {length}", str(image)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "verification failed" not in r.stdout, r.stdout + r.stderr


def _check_clean(image: Path) -> None:
    r = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout + r.stderr


def _migrate(src, dst) -> tuple[MigrationSource, Incoming]:
    inc = Incoming(dst, "tcp:127.0.0.1:0").start()
    job = MigrationSource(src, connect(parse_uri(f"tcp:127.0.0.1:{inc.address[1]}")))
    job.run()
    assert inc.done.wait(30)
    return job, inc


def test_kvmpy_to_kvmpy_on_the_same_qcow2_chain_with_locking_on(tmp_path: Path) -> None:
    base, top = _chain(tmp_path)
    base_bytes = base.read_bytes()
    src = _machine(top)
    try:
        sdrv = _driver(src)
        assert _write(src, sdrv, 0, 0x11) == S_OK
        dst = _machine(top, "-incoming", "defer")  # opens the image beside the running source
        try:
            assert locks_of(top) == TOP_HELD and locks_of(base) == BACKING_HELD  # the source's only
            assert not dst.drives[0].active
            # The source allocates clusters after the destination read the image's tables.
            assert _write(src, sdrv, 2048, 0x22) == S_OK
            job, inc = _migrate(src, dst)
            assert job.stats.status == "completed", job.stats.error
            assert inc.error is None and dst.lifecycle.state is RunState.RUNNING
            assert src.lifecycle.state is RunState.POSTMIGRATE
            assert not src.drives[0].active and dst.drives[0].active
            assert locks_of(top) == TOP_HELD and locks_of(base) == BACKING_HELD  # now the destination's
            # The destination's guest writes: a new cluster, and half of one the source allocated after
            # the destination had read the tables (found only through the re-read L1/L2).
            ddrv = _driver(dst)
            assert _write(dst, ddrv, 4096, 0x33) == S_OK
            assert _write(dst, ddrv, 2048 + 64, 0x44) == S_OK
            # The source (stopped, its queues not served) may not write the image the destination owns.
            with pytest.raises(BlockError, match="inactive"):
                src.drives[0].write_from(6144 * 512, [memoryview(b"\x66" * 65536)])
        finally:
            dst.close()
    finally:
        src.close()  # an inactive image: closing it writes nothing
    _check_clean(top)
    for offset, fill in ((0, 0x11), (4096 * 512, 0x33), ((2048 + 64) * 512, 0x44),
                         (6144 * 512, 0x55)):  # 0x55: the refused write never reached the image
        _read_back(top, offset, fill)
    _read_back(top, 2048 * 512, 0x22, 32768)  # the half of the source's cluster the destination left
    assert base.read_bytes() == base_bytes


def test_a_failed_hand_over_leaves_the_source_writable(tmp_path: Path) -> None:
    """The destination's own image is held by another user: it cannot activate, answers NAK_BLOCK, and the
    source, which had already flushed and unlocked its image, takes it back and carries on writing."""
    from kvmpy.block.drive import open_drive

    _, top = _chain(tmp_path)
    other = tmp_path / "other.qcow2"
    shutil.copy(top, other)
    src = _machine(top)
    try:
        sdrv = _driver(src)
        assert _write(src, sdrv, 0, 0x11) == S_OK
        dst = _machine(other, "-incoming", "defer")
        holder = open_drive(other, "qcow2", id="holder")  # a third user, writing the destination's image
        try:
            job, inc = _migrate(src, dst)
            assert job.stats.status == "failed"
            assert "could not take over the disk images" in (job.stats.error or ""), job.stats.error
            assert inc.error is not None and 'Failed to get "write" lock' in inc.error
            assert src.drives[0].active and not dst.drives[0].active
            assert src.lifecycle.state is RunState.RUNNING
            assert locks_of(top) >= TOP_HELD
            assert _write(src, sdrv, 2048, 0x22) == S_OK  # the source still owns and writes its image
        finally:
            holder.close()
            dst.close()
    finally:
        src.close()
    _check_clean(top)
    _read_back(top, 0, 0x11)
    _read_back(top, 2048 * 512, 0x22)


def test_a_cancelled_migration_leaves_the_source_writable(tmp_path: Path) -> None:
    _, top = _chain(tmp_path)
    src = _machine(top)
    try:
        sdrv = _driver(src)
        dst = _machine(top, "-incoming", "defer")
        try:
            inc = Incoming(dst, "tcp:127.0.0.1:0").start()
            job = MigrationSource(src, connect(parse_uri(f"tcp:127.0.0.1:{inc.address[1]}")))
            job.cancel()
            job.run()
            assert job.stats.status == "cancelled"
            assert src.drives[0].active and not dst.drives[0].active
            assert _write(src, sdrv, 0, 0x77) == S_OK
        finally:
            dst.close()
    finally:
        src.close()
    _check_clean(top)
    _read_back(top, 0, 0x77)


def test_a_source_that_cannot_take_its_image_back_stays_paused_until_it_can(tmp_path: Path) -> None:
    """The destination (here a bare socket) refuses the VM after the source gave its image up, and by then a
    third user has taken the image: the source must not run a guest whose disk it cannot write. It stays
    paused with a plain error; once the image is free again, taking it back and resuming works."""
    import socket

    from kvmpy.block.drive import activate_drives, open_drive
    from kvmpy.migration import stream

    _, top = _chain(tmp_path)
    src = _machine(top)
    holder = None
    try:
        sdrv = _driver(src)
        server = socket.create_server(("127.0.0.1", 0))
        job = MigrationSource(src, connect(parse_uri(f"tcp:127.0.0.1:{server.getsockname()[1]}")))
        job.start()
        conn, _ = server.accept()
        conn.settimeout(1.0)
        try:
            while conn.recv(1 << 20):  # the whole stream; the source then waits for our reply
                pass
        except TimeoutError:
            pass
        assert src.lifecycle.state is RunState.FINISH_MIGRATE and not src.drives[0].active
        assert locks_of(top) == set()  # flushed and unlocked at switchover
        holder = open_drive(top, "qcow2", id="intruder")
        conn.sendall(stream.NAK)
        assert job.wait(30)
        conn.close()
        server.close()
        assert job.stats.status == "failed"
        assert "stays paused" in (job.stats.error or "") and 'Failed to get "write" lock' in job.stats.error
        assert src.lifecycle.state is RunState.PAUSED and not src.drives[0].active
        holder.close()
        holder = None
        activate_drives(src.drives)  # what QMP cont does first
        assert src.lifecycle.resume()
        assert _write(src, sdrv, 0, 0x12) == S_OK
    finally:
        if holder is not None:
            holder.close()
        src.close()
    _check_clean(top)
    _read_back(top, 0, 0x12)

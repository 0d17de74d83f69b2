"""savevm / loadvm / delvm: VM snapshots stored in qcow2 images, as QEMU 7.2 keeps them.

Every writable disk gets an internal qcow2 snapshot with the same tag; the first
writable qcow2 disk (or the one named by ``vmstate``) also holds the VM state
in its VM state area beyond the virtual disk end (``qcow2_snapshot.write_vmstate``),
and its snapshot-table entry records ``vm_state_size``. The VM state is kvmpy's
own migration stream (``kvmpy.migration.stream``): the configuration record,
every RAM page, the device / vCPU / VM sections and the END checksum, so a
loadvm is a migration read back from the image.

``load_vm`` checks everything it can before it touches the machine: the tag on
every disk, the state's configuration against this machine (a DIMM added or
removed since is refused by name, ConfigMismatchError) and the stream's
checksum; a refused loadvm leaves the VM as it was, running if it ran. Only
then does it stop the VM, load RAM and state, and revert the disks.

Errors carry QEMU's wording (``SnapshotError``); the callers (HMP, QMP jobs,
``-loadvm``) show them as one line.
"""

from __future__ import annotations

import io
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from kvmpy.block import qcow2_format as fmt
from kvmpy.block import qcow2_snapshot as qsnap
from kvmpy.block.drive import Drive
from kvmpy.block.errors import BlockError
from kvmpy.block.qcow2 import Qcow2Backend
from kvmpy.block.qcow2_metadata import Qcow2Metadata
from kvmpy.lifecycle import RunState
from kvmpy.migration import stream
from kvmpy.migration.destination import MigrationDestination
from kvmpy.migration.errors import ConfigMismatchError, MigrationError, StreamError
from kvmpy.migration.interface import MigratableVm
from kvmpy.migration.ram import RamCounters, RamSender
from kvmpy.migration.stream import StreamReader, StreamWriter
from kvmpy.migration.transport import FileChannel
from kvmpy.vmstate import config_diffs

log = logging.getLogger(__name__)

ICOUNT_NONE = (1 << 64) - 1  # QEMU writes -1 when not recording an icount
WRITE_CHUNK = 4 << 20  # the VM state goes to the image in pieces of this many bytes (whole clusters)


class SnapshotError(MigrationError):
    """A savevm/loadvm/delvm was refused or failed; the message is QEMU's, one line."""


@dataclass
class SnapshotInfo:
    """One tag as ``info snapshots`` lists it (QEMU's QEMUSnapshotInfo)."""

    id: str
    name: str
    vm_state_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    icount: int | None


def _meta(drive: Drive) -> Qcow2Metadata | None:
    img = drive.image
    return img.meta if isinstance(img, Qcow2Backend) else None


def can_snapshot(drive: Drive) -> bool:
    """QEMU's bdrv_can_snapshot: a writable image whose format keeps internal snapshots."""
    return not drive.readonly and _meta(drive) is not None


def device_name(drive: Drive) -> str:
    """QEMU's bdrv_get_device_or_node_name: the -drive id, else the -blockdev node name."""
    return drive.id or drive.node_name


def _image(drive: Drive) -> Qcow2Metadata:
    meta = _meta(drive)
    if meta is None or drive.readonly:
        raise SnapshotError(f"Device '{device_name(drive)}' is writable but does not support snapshots")
    return meta


def snapshot_drives(vm: MigratableVm, devices: Sequence[Drive] | None = None) -> list[Drive]:
    """The disks a snapshot covers: ``devices``, or every writable disk; each must support it."""
    if devices is not None and not devices:
        raise SnapshotError("At least one device is required for snapshot")
    drives = list(devices) if devices is not None else [d for d in vm.drives if not d.readonly]
    for d in drives:
        _image(d)
    return drives


def vmstate_drive(drives: Sequence[Drive], vmstate: Drive | None = None, name: str | None = None) -> Drive:
    """QEMU's bdrv_all_find_vmstate_bs: the disk named ``name`` (``vmstate``, None when no disk has
    that name), else the first of ``drives`` that can take a snapshot."""
    for d in drives:
        if (name is None or d is vmstate) and can_snapshot(d):
            return d
    if name is not None:
        raise SnapshotError(f"vmstate block device '{name}' does not exist")
    raise SnapshotError("no block device can store vmstate for snapshot")


def _find(meta: Qcow2Metadata, tag: str) -> fmt.SnapshotEntry | None:
    try:
        return meta.snapshots[qsnap.find(meta, tag)]
    except BlockError:
        return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class _AreaChannel:
    """A write-only stream channel into a qcow2 image's VM state area, whole clusters at a time."""

    duplex = False

    def __init__(self, meta: Qcow2Metadata) -> None:
        self.meta = meta
        self.pos = 0
        self.buf = bytearray()

    def write(self, data: object) -> None:
        self.buf += memoryview(data).cast("B")  # type: ignore[arg-type]
        if len(self.buf) >= WRITE_CHUNK:
            n = len(self.buf) // self.meta.cs * self.meta.cs
            qsnap.write_vmstate(self.meta, self.pos, memoryview(self.buf)[:n])
            self.pos += n
            del self.buf[:n]

    def finish(self) -> None:
        if self.buf:
            qsnap.write_vmstate(self.meta, self.pos, self.buf)
            self.pos += len(self.buf)
            self.buf.clear()


def _clock_ns(sections: dict[str, object]) -> int:
    """The guest's KVM clock (struct kvm_clock_data starts with the u64 ns), for VM CLOCK."""
    raw = sections.get("vm/clock")
    return struct.unpack_from("<Q", raw)[0] if isinstance(raw, bytes) and len(raw) >= 8 else 0


def _write_state(vm: MigratableVm, meta: Qcow2Metadata) -> tuple[int, int]:
    """The migration stream of the stopped VM into the image; returns (bytes, guest clock ns)."""
    channel = _AreaChannel(meta)
    writer = StreamWriter(channel)
    writer.header(vm.vmstate.describe())
    blocks = vm.ram_blocks
    sender = RamSender(blocks, writer, RamCounters())
    sender.stable = True  # the vCPUs are stopped: nothing writes RAM while it goes out
    for i in range(len(blocks)):
        sender.send_all(i)
    sections = vm.vmstate.capture()
    for name, state in sections.items():
        writer.section(name, state)
    writer.end()
    channel.finish()
    return writer.bytes, _clock_ns(sections)


def save_vm(vm: MigratableVm, name: str | None, *, overwrite: bool = True, vmstate: Drive | None = None,
            devices: Sequence[Drive] | None = None, vmstate_name: str | None = None) -> SnapshotInfo:
    """QEMU's save_snapshot: stop, write the state, snapshot every disk, run again if it ran.

    ``overwrite`` (HMP savevm) first deletes a snapshot of the same tag; without it (QMP) an
    existing tag is refused. SnapshotError, and no disk keeps a half-made snapshot.
    """
    drives = snapshot_drives(vm, devices)
    if name:
        having = [d for d in drives if _find(_image(d), name) is not None]
        if having and not overwrite:
            raise SnapshotError(f"Snapshot '{name}' already exists in one or more devices")
        for d in having:
            _delete_on(d, name)
    vs = vmstate_drive(drives, vmstate, vmstate_name)
    tag = name or time.strftime("vm-%Y%m%d%H%M%S")
    t0 = time.monotonic()
    with vm.lifecycle.exclusive():  # no DIMM may come or go while the state is written
        size, entry = _save_stopped(vm, drives, vs, tag)
    log.info("savevm %s: %d bytes of VM state on %s in %.0f ms", tag, size, device_name(vs),
             (time.monotonic() - t0) * 1e3)
    return _info(entry)


def _save_stopped(vm: MigratableVm, drives: list[Drive], vs: Drive, tag: str) -> tuple[int, fmt.SnapshotEntry]:
    """Stop the VM, write its state into ``vs``, snapshot every disk, run it again if it ran."""
    was_running = vm.lifecycle.pause(RunState.SAVE_VM)
    try:
        for d in drives:
            d.flush()
        meta = _image(vs)
        try:
            size, clock = _write_state(vm, meta)
            made: list[Drive] = []
            try:
                for d in drives:
                    qsnap.create(_image(d), tag, vm_state_size=size if d is vs else 0,
                                 vm_clock_nsec=clock, icount=ICOUNT_NONE)
                    made.append(d)
            except BlockError:
                for d in made:
                    _delete_on(d, tag, quiet=True)
                raise
        finally:
            qsnap.discard_vmstate(meta)
        entry = meta.snapshots[qsnap.find(meta, tag)]
    except BlockError as exc:
        raise SnapshotError(_one_line(exc)) from None
    except (MigrationError, OSError) as exc:
        raise SnapshotError(f"Error while writing VM state: {_one_line(exc)}") from None
    finally:
        if was_running:
            vm.lifecycle.resume()
    return size, entry


def _delete_on(drive: Drive, tag: str, quiet: bool = False) -> None:
    meta = _image(drive)
    while _find(meta, tag) is not None:  # QEMU deletes by id or name, one at a time
        try:
            qsnap.delete(meta, tag)
        except BlockError as exc:
            if quiet:
                log.error("could not delete snapshot '%s' on '%s': %s", tag, device_name(drive), exc)
                return
            raise SnapshotError(f"Could not delete snapshot '{tag}' on '{device_name(drive)}': "
                                f"{_one_line(exc)}") from None


def delete_vm(vm: MigratableVm, name: str, devices: Sequence[Drive] | None = None) -> None:
    """QEMU's bdrv_all_delete_snapshot: the tag goes from every disk that has it (none: no error)."""
    for d in snapshot_drives(vm, devices):
        _delete_on(d, name)


def _check_state(vm: MigratableVm, data: bytes, tag: str) -> None:
    """Before anything changes: the state fits this machine and is intact (its END checksum)."""
    reader = StreamReader(FileChannel(io.BytesIO(data)))  # type: ignore[arg-type]
    diffs = config_diffs(vm.vmstate.describe(), reader.header(), "in the snapshot")
    if diffs:
        raise ConfigMismatchError("the snapshot does not fit this machine: " + "; ".join(diffs))
    tail = 1 + stream.U64.size
    if len(data) < tail or data[-tail] != stream.T_END:
        raise StreamError(f"the VM state of snapshot '{tag}' is truncated (it does not end with END)")
    (want,) = stream.U64.unpack_from(data, len(data) - stream.U64.size)
    got = xxhash.xxh3_64_intdigest(memoryview(data)[:-stream.U64.size])
    if got != want:
        raise StreamError(f"checksum mismatch: the VM state says {want:#018x}, its contents give "
                          f"{got:#018x} (the image is damaged)")


def fetch_state(vm: MigratableVm, meta: Qcow2Metadata, entry: fmt.SnapshotEntry) -> bytes:
    """The VM state of a snapshot, read through its L1 table and checked (configuration, checksum)
    without touching the VM: SnapshotError, one line, whatever the image holds."""
    try:
        data = qsnap.read_vmstate(meta, entry)
        _check_state(vm, data, entry.name)
    except (BlockError, MigrationError) as exc:
        raise SnapshotError(f"Error -22 while loading VM state: {_one_line(exc)}") from None
    return data


def load_vm(vm: MigratableVm, name: str, *, vmstate: Drive | None = None,
            devices: Sequence[Drive] | None = None, vmstate_name: str | None = None) -> None:
    """QEMU's load_snapshot. SnapshotError; when it is raised before the VM was stopped (every
    check, the state's configuration and checksum included) nothing changed."""
    drives = snapshot_drives(vm, devices)
    if not drives:
        vmstate_drive(drives, vmstate, vmstate_name)  # raises QEMU's "no block device can store ..."
    if any(_find(_image(d), name) is None for d in drives):
        raise SnapshotError(f"Snapshot '{name}' does not exist in one or more devices")
    vs = vmstate_drive(drives, vmstate, vmstate_name)
    meta = _image(vs)
    entry = _find(meta, name)
    assert entry is not None
    if entry.vm_state_size == 0:
        raise SnapshotError("This is a disk-only snapshot. Revert to it offline using qemu-img")
    data = fetch_state(vm, meta, entry)
    with vm.lifecycle.exclusive():  # no DIMM may come or go between the check and the load
        was_running = vm.lifecycle.pause(RunState.RESTORE_VM)
        try:
            # A vCPU parked on an I/O exit would otherwise retire that IN/OUT into the loaded registers.
            vm.vmstate.complete_pending_io()
            MigrationDestination(vm, FileChannel(io.BytesIO(data))).receive()  # type: ignore[arg-type]
            for d in drives:
                m = _image(d)
                e = _find(m, name)
                assert e is not None
                qsnap.apply(m, e.id)
            qsnap.discard_vmstate(meta)
        except (BlockError, MigrationError, OSError) as exc:
            # Half loaded: as QEMU, the VM stays stopped ('cont' runs whatever it now holds).
            if was_running:
                vm.lifecycle.set_state(RunState.PAUSED)
            raise SnapshotError(f"Error -22 while loading VM state: {_one_line(exc)}") from None
        if was_running:
            vm.lifecycle.resume()
        elif vm.lifecycle.state is RunState.RESTORE_VM:
            vm.lifecycle.set_state(RunState.PAUSED)
    log.info("loadvm %s: %d bytes of VM state from %s", name, len(data), device_name(vs))


def _info(e: fmt.SnapshotEntry) -> SnapshotInfo:
    return SnapshotInfo(e.id, e.name, e.vm_state_size, e.date_sec, e.date_nsec, e.vm_clock_nsec,
                        None if e.icount in (None, ICOUNT_NONE) else e.icount)


def loadable(vm: MigratableVm, tag: str) -> bool:
    """QEMU's bdrv_all_has_snapshot == 1: every writable disk supports snapshots and has ``tag``."""
    drives = [d for d in vm.drives if not d.readonly]
    return all(can_snapshot(d) and _find(_image(d), tag) is not None for d in drives)


def list_snapshots(drive: Drive) -> list[SnapshotInfo]:
    """The snapshot table of one disk (empty for one that cannot take snapshots)."""
    meta = _meta(drive)
    return [] if meta is None else [_info(e) for e in meta.snapshots]

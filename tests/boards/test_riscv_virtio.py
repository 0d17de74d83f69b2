"""virtio-mmio on the riscv64 virt board: where the transports sit, how they are wired, what the front end builds.

The real-guest check (U-Boot reading a disk) is tests/boards/test_riscv_uboot_virtio.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpy.board_catalog import VIRT_DEVICE_DRIVERS
from kvmpy.boards import riscv_virtio
from kvmpy.boards.riscv_virt import DRAM_BASE, VirtBoard
from kvmpy.cli import parse_qemu_args
from kvmpy.config import ConfigError
from kvmpy.devices.virtio import mmio as m
from kvmpy.devices.virtio.device import STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK
from kvmpy.devices.virtio.rng import VirtioRng
from tests.devices.virtio.driver import DriverQueue

BASE = riscv_virtio.VIRTIO_BASE


def test_the_catalogue_names_what_the_board_builds() -> None:
    assert set(riscv_virtio.FACTORIES) == VIRT_DEVICE_DRIVERS


def test_eight_empty_transports_answer_on_the_bus() -> None:
    b = VirtBoard(16 << 20)
    for i in range(8):
        base = BASE + 0x1000 * i
        assert b.bus.read(base + m.MAGIC_VALUE, 4) == 0x74726976
        assert b.bus.read(base + m.VERSION_REG, 4) == 2 and b.bus.read(base + m.DEVICE_ID, 4) == 0


def test_devices_take_the_highest_free_transport_first_as_in_qemu() -> None:
    b = VirtBoard(16 << 20)
    first, second = b.plug_virtio(VirtioRng()), b.plug_virtio(VirtioRng())
    assert (first.name, second.name) == ("virtio-mmio@10008000", "virtio-mmio@10007000")
    assert b.bus.read(0x10008000 + m.DEVICE_ID, 4) == 4 and b.bus.read(0x10007000 + m.DEVICE_ID, 4) == 4
    assert b.bus.read(0x10006000 + m.DEVICE_ID, 4) == 0


def bring_up(b: VirtBoard, base: int, ring: int) -> DriverQueue:
    w = lambda off, v: b.bus.write(base + off, 4, v)  # noqa: E731
    for s in (STATUS_ACKNOWLEDGE, STATUS_ACKNOWLEDGE | STATUS_DRIVER):
        w(m.STATUS, s)
    w(m.DRIVER_FEATURES_SEL, 1)
    w(m.DRIVER_FEATURES, 1)  # VERSION_1
    w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    dq = DriverQueue(b.ram.memory, ring, 8)
    w(m.QUEUE_SEL, 0)
    w(m.QUEUE_NUM, 8)
    for lo, addr in ((m.QUEUE_DESC_LOW, dq.desc), (m.QUEUE_DRIVER_LOW, dq.avail), (m.QUEUE_DEVICE_LOW, dq.used)):
        w(lo, addr)
    w(m.QUEUE_READY, 1)
    w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    return dq


def test_a_request_lands_in_board_ram_and_raises_plic_source_8() -> None:
    b = VirtBoard(16 << 20)
    b.plug_virtio(VirtioRng(entropy=lambda n: b"\xa5" * n))
    dq = bring_up(b, 0x10008000, DRAM_BASE + 0x100000)
    head = dq.add([], [(DRAM_BASE + 0x200000, 16)])
    b.bus.write(0x10008000 + m.QUEUE_NOTIFY, 4, 0)
    assert dq.get_used() == [(head, 16)]
    assert b.mem.ram[0x200000:0x200010] == b"\xa5" * 16  # the softmmu's RAM itself
    assert b.plic.pending >> 8 & 1
    b.bus.write(0x10008000 + m.INTERRUPT_ACK, 4, 1)
    assert not b.plic.pending >> 8 & 1


def test_a_device_write_over_translated_code_drops_it() -> None:
    b = VirtBoard(16 << 20)
    b.plug_virtio(VirtioRng(entropy=lambda n: b"\x13" * n))
    dq = bring_up(b, 0x10008000, DRAM_BASE + 0x100000)
    code_page = (DRAM_BASE + 0x300000) >> 12
    b.mem.mark_code_page(code_page)
    b.mem.mark_code_page(code_page + 5)
    written: list[int] = []
    hook = b.mem.on_code_write
    b.mem.on_code_write = lambda page: (written.append(page), hook(page))  # type: ignore[func-returns-value]
    dq.add([], [(DRAM_BASE + 0x300000 + 0xFF0, 0x20)])  # across into the next page
    b.bus.write(0x10008000 + m.QUEUE_NOTIFY, 4, 0)
    assert written == [code_page]
    assert code_page not in b.mem.code_pages and code_page + 5 in b.mem.code_pages


def argv(*extra: str) -> list[str]:
    return ["-M", "virt", "-bios", "none", "-kernel", "/bin/true", *extra]


def test_drive_if_virtio_is_a_virtio_blk_device_on_virt(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(bytes(4096))
    cfg = parse_qemu_args(argv("-drive", f"file={img},format=raw,if=virtio"))
    assert [(d.driver, d.props) for d in cfg.devices] == [("virtio-blk-device", (("drive", "virtio0"),))]
    cfg.validate()
    pc = parse_qemu_args(["-drive", f"file={img},format=raw,if=virtio", "-enable-kvm"])
    assert [d.driver for d in pc.devices] == ["virtio-blk-pci"]


@pytest.mark.parametrize("extra,message", [
    (("-device", "virtio-blk-pci"), "machine 'virt' does not build it yet"),
    (("-device", "virtio-blk-device,drive=nope"), "Property 'virtio-blk-device.drive' can't find value 'nope'"),
])
def test_refused_by_name(extra: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_qemu_args(argv(*extra)).validate()


def test_builds_the_devices_in_order_and_refuses_unknown_properties(tmp_path: Path) -> None:
    img = tmp_path / "d.raw"
    img.write_bytes(bytes(1 << 20))
    b = VirtBoard(16 << 20)
    cfg = parse_qemu_args(argv("-device", "virtio-rng-device", "-drive", f"file={img},format=raw,if=virtio"))
    built = riscv_virtio.build_virtio_devices(cfg, b.ram.memory)
    try:
        assert [name for name, _ in built] == ["virtio-rng-device", "virtio-blk-device"]
        assert built[1][1].config_read(0, 8) == 2048
    finally:
        for _, dev in built:
            dev.close()
    bad = parse_qemu_args(argv("-device", "virtio-rng-device,foo=1"))
    with pytest.raises(ConfigError, match=r"Property 'virtio-rng-device.foo' not found"):
        riscv_virtio.build_virtio_devices(bad, b.ram.memory)


def test_an_interrupt_raised_on_a_device_thread_reaches_the_plic_on_the_cpu_thread() -> None:
    import threading

    b = VirtBoard(16 << 20)
    t = b.plug_virtio(VirtioRng())
    worker = threading.Thread(target=t.config_changed)  # as a NIC's receive thread raises its queue interrupt
    worker.start()
    worker.join()
    assert b.lines.pending and not b.plic.pending >> 8 & 1  # nothing touched the PLIC from that thread
    b.lines.apply()  # the CPU thread's device poll
    assert b.plic.pending >> 8 & 1 and not b.lines.pending
    t.config_changed()  # on the CPU thread: straight through
    assert not b.lines.pending


def test_virtio_net_device_on_a_user_netdev() -> None:
    b = VirtBoard(16 << 20)
    cfg = parse_qemu_args(argv("-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0,mac=52:54:00:aa:bb:cc"))
    cfg.validate()
    built = riscv_virtio.build_virtio_devices(cfg, b.ram.memory)
    try:
        (name, nic), = built
        assert name == "virtio-net-device" and bytes(nic.config_read(i, 1) for i in range(6)) == \
            bytes.fromhex("525400aabbcc")
    finally:
        for _, dev in built:
            dev.close()
    with pytest.raises(ConfigError, match="Property 'virtio-net-device.netdev' can't find value 'n1'"):
        riscv_virtio.build_virtio_devices(parse_qemu_args(argv("-netdev", "user,id=n0", "-device",
                                                                "virtio-net-device,netdev=n1")), b.ram.memory)


def test_a_long_indirect_read_goes_straight_into_the_softmmu_ram(tmp_path: Path) -> None:
    """Linux's 1 MiB-style requests (an indirect table of many pages) are read with one preadv on the
    RAM block's host addresses: here those of the softmmu's bytearray."""
    import struct

    from kvmpy.block.drive import open_drive
    from kvmpy.devices.virtio.blk import BlkOptions, VirtioBlk

    img = tmp_path / "d.raw"
    data = bytes(range(256)) * (64 * 1024 // 256)
    img.write_bytes(data + bytes(1 << 20))
    drive = open_drive(img, "raw", id="d0")
    b = VirtBoard(16 << 20)
    b.plug_virtio(VirtioBlk(drive, b.ram.memory, BlkOptions()))
    try:
        ring, hdr, table, buf = (DRAM_BASE + off for off in (0x100000, 0x180000, 0x181000, 0x200000))
        base = 0x10008000
        w = lambda off, v: b.bus.write(base + off, 4, v)  # noqa: E731
        w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        features = 0
        for sel in (0, 1):
            w(m.DEVICE_FEATURES_SEL, sel)
            features |= b.bus.read(base + m.DEVICE_FEATURES, 4) << (32 * sel)
        for sel in (0, 1):
            w(m.DRIVER_FEATURES_SEL, sel)
            w(m.DRIVER_FEATURES, features >> (32 * sel) & 0xFFFFFFFF)
        w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        dq = DriverQueue(b.ram.memory, ring, 8)
        w(m.QUEUE_SEL, 0)
        w(m.QUEUE_NUM, 8)
        for lo, addr in ((m.QUEUE_DESC_LOW, dq.desc), (m.QUEUE_DRIVER_LOW, dq.avail), (m.QUEUE_DEVICE_LOW, dq.used)):
            w(lo, addr)
        w(m.QUEUE_READY, 1)
        w(m.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        b.ram.memory.write(hdr, struct.pack("<IIQ", 0, 0, 0))
        pages = [(buf + 0x2000 * i, 4096) for i in range(16)]  # 16 pages, every other one
        head = dq.add([(hdr, 16)], [*pages, (hdr + 0x100, 1)], indirect_at=table)
        w(m.QUEUE_NOTIFY, 0)
        assert dq.get_used() == [(head, 16 * 4096 + 1)]
        for i, (gpa, n) in enumerate(pages):
            off = gpa - DRAM_BASE
            assert bytes(b.mem.ram[off:off + n]) == data[4096 * i:4096 * (i + 1)]
    finally:
        b.close()

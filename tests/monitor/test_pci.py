"""query-pci and info pci: the host and ISA bridges exactly as QEMU 7.2's pc machine reports them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.monitor.conftest import arun, qmp_connect

pytestmark = pytest.mark.kvm_host
BRIDGES = 2  # 00.0 and 01.0; QEMU's pc also has PIIX IDE (01.1) and PIIX4 PM (01.3), which kvmpy does not


async def _ask(path, cmds: list[tuple[str, dict]]) -> list:
    qmp = await qmp_connect(path, "pci-test")  # QEMU creates its socket a moment after it starts
    out = [await qmp.execute(name, args) for name, args in cmds]
    await qmp.disconnect()
    return out


QUERIES = [("query-pci", {}), ("human-monitor-command", {"command-line": "info pci"})]


def _blocks(text: str) -> list[str]:
    return ["  Bus" + b for b in text.split("  Bus")[1:]]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_query_pci_and_info_pci_match_qemu(vm, short_tmp) -> None:
    sock = short_tmp / "qemu.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-M", "pc", "-nodefaults", "-display", "none", "-accel", "tcg",
                             "-S", "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        theirs_pci, theirs_text = arun(_ask(sock, QUERIES))
    finally:
        qemu.kill()
        qemu.wait()
    ours_pci, ours_text = arun(_ask(vm.path, QUERIES))
    assert len(ours_pci) == 1 and ours_pci[0]["bus"] == 0 and set(ours_pci[0]) == set(theirs_pci[0])
    ours, theirs = ours_pci[0]["devices"], theirs_pci[0]["devices"][:BRIDGES]
    for mine, qemus in zip(ours, theirs, strict=True):
        assert mine == qemus  # every field: ids, class_info, irq_pin, qdev_id, regions
    assert _blocks(ours_text) == _blocks(theirs_text)[:BRIDGES]


def test_info_pci_shows_bars_and_irq_of_a_plugged_function(vm) -> None:
    from kvmpy.devices.pci.device import Bar, BarKind, PciDevice, PciIdentity
    from kvmpy.devices.port80 import Port80

    fn = PciDevice("nic", PciIdentity(0x1AF4, 0x1000, 0x0200, interrupt_pin=1),
                   (Bar(0, BarKind.IO, 32, Port80()), Bar(1, BarKind.MEM64, 0x4000, Port80(), prefetchable=True)))
    vm.machine.board.pci.plug(fn, 3)
    fn.config_write(0x10, 4, 0xC000)
    fn.config_write(0x3C, 1, 11)
    fn.config_write(0x04, 2, 0x1)
    pci, text = arun(_ask(vm.path, QUERIES))
    dev = pci[0]["devices"][2]
    assert dev["irq"] == 11 and dev["irq_pin"] == 1
    assert dev["class_info"] == {"class": 512, "desc": "Ethernet controller"}
    assert dev["regions"] == [{"bar": 0, "type": "io", "address": 0xC000, "size": 32},
                              {"bar": 1, "type": "memory", "address": -1, "size": 0x4000, "prefetch": True,
                               "mem_type_64": True}]
    assert _blocks(text)[2] == ("  Bus  0, device   3, function 0:\r\n"
                                "    Ethernet controller: PCI device 1af4:1000\r\n"
                                "      PCI subsystem 1af4:1100\r\n"
                                "      IRQ 11, pin A\r\n"
                                "      BAR0: I/O at 0xc000 [0xc01f].\r\n"
                                "      BAR1: 64 bit prefetchable memory at 0xffffffffffffffff [0x00003ffe].\r\n"
                                "      id \"\"\r\n")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed")
def test_a_virtio_rng_pci_function_matches_qemus(short_tmp) -> None:
    from kvmpy.config_devices import DeviceSpec
    from tests.monitor.conftest import boot, teardown

    sock = short_tmp / "qemu.sock"
    qemu = subprocess.Popen(["qemu-system-x86_64", "-M", "pc", "-nodefaults", "-display", "none", "-accel", "tcg",
                             "-S", "-qmp", f"unix:{sock},server=on,wait=off",
                             "-device", "virtio-rng-pci,disable-legacy=on,id=rng0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        theirs_pci, theirs_text = arun(_ask(sock, QUERIES))
    finally:
        qemu.kill()
        qemu.wait()
    ours_dir = short_tmp / "ours"
    ours_dir.mkdir()
    vm = boot(ours_dir, start_paused=True, devices=(DeviceSpec("virtio-rng-pci", "rng0", (("disable-legacy", "on"),)),))
    try:
        ours_pci, ours_text = arun(_ask(vm.path, QUERIES))
    finally:
        teardown(vm)
    mine = next(d for d in ours_pci[0]["devices"] if d["slot"] == 2)
    qemus = next(d for d in theirs_pci[0]["devices"] if d["slot"] == 2)
    assert mine == qemus  # ids, class 0x00ff, irq pin, qdev_id, BAR1 (MSI-X) and BAR4 unassigned
    block = next(b for b in _blocks(ours_text) if "device   2," in b)
    assert block == next(b for b in _blocks(theirs_text) if "device   2," in b)

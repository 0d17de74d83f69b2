"""The memory-hotplug ACPI (DSDT MHPD/MHPC/_E03, SRAT, FADT GPE0) against QEMU's own tables.

QEMU 7.2 runs SeaBIOS under TCG for a few seconds with ``-m 256M,slots=4,maxmem=4G``;
its tables are read from guest RAM over QMP and disassembled with iasl, like ours.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmpy.loader import acpi
from kvmpy.loader.memhp_aml import HotplugMemory
from kvmpy.loader.e820 import pci_holes
from kvmpy.memory.dimm import device_memory_window
from tests.monitor.conftest import qmp_process

MiB, GiB = 1 << 20, 1 << 30
needs_tools = pytest.mark.skipif(not (shutil.which("qemu-system-x86_64") and shutil.which("iasl")),
                                 reason="needs qemu-system-x86_64 and iasl (acpica-tools)")


def ours(tmp: Path) -> dict[str, bytes]:
    ram = 256 * MiB
    base, size = device_memory_window(0, ram, 4 * GiB, 4)
    t = acpi.build_tables(ram - 0x20000, 1, pci_holes(ram, base + size), HotplugMemory(4, base, size), (ram, 0))
    out = {}
    for sig, addr in t.tables.items():
        off = addr - t.base
        out[sig] = t.blob[off:off + (64 if sig == "FACS" else struct.unpack_from("<I", t.blob, off + 4)[0])]
    return out


async def _qemu_ram(sock: Path, dump: Path) -> None:
    argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults",
            "-m", "256M,slots=4,maxmem=4G", "-qmp", f"unix:{sock},server=on,wait=on"]
    async with qmp_process(argv, sock, "acpi-test") as client:
        for _ in range(60):  # until SeaBIOS has written its tables
            await asyncio.sleep(0.5)
            await client.execute("pmemsave", {"val": 0xE0000, "size": 0x20000, "filename": str(dump)})
            if b"RSD PTR " in dump.read_bytes():
                break
        await asyncio.sleep(0.5)
        await client.execute("stop")
        await client.execute("pmemsave", {"val": 0, "size": 256 * MiB, "filename": str(dump)})


def qemus(tmp: Path) -> dict[str, bytes]:
    dump = tmp / "ram.bin"
    asyncio.run(_qemu_ram(tmp / "q.sock", dump))
    ram = dump.read_bytes()
    rsdp = ram.find(b"RSD PTR ", 0xE0000)
    rsdt = struct.unpack_from("<I", ram, rsdp + 16)[0]
    out = {}
    for k in range((struct.unpack_from("<I", ram, rsdt + 4)[0] - 36) // 4):
        a = struct.unpack_from("<I", ram, rsdt + 36 + 4 * k)[0]
        out[ram[a:a + 4].decode()] = ram[a:a + struct.unpack_from("<I", ram, a + 4)[0]]
    dsdt = struct.unpack_from("<I", out["FACP"], 40)[0]
    out["DSDT"] = ram[dsdt:dsdt + struct.unpack_from("<I", ram, dsdt + 4)[0]]
    return out


def disassemble(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / f"{name}.dat"
    path.write_bytes(data)
    subprocess.run(["iasl", "-d", str(path)], check=True, capture_output=True)
    return path.with_suffix(".dsl").read_text()


def hotplug_part(dsl: str) -> str:
    start = dsl.index("Device (\\_SB.PCI0.MHPD)")
    return dsl[start:dsl.index("\\_SB.MHPC.MSCN ()", start)]


def body_lines(dsl: str) -> list[str]:
    """The decoded fields, without header bytes that differ by vendor (OEM ids, checksum, dump)."""
    skip = ("Checksum", "Oem", "Asl Compiler", "Disassembly of", "Raw Table Data")
    return [ln for ln in dsl.splitlines() if "]" in ln and not any(s in ln for s in skip)]


@needs_tools
def test_tables_match_qemu(tmp_path: Path) -> None:
    q_dir, k_dir = tmp_path / "qemu", tmp_path / "kvmpy"
    q_dir.mkdir()
    k_dir.mkdir()
    q, k = qemus(q_dir), ours(k_dir)
    assert hotplug_part(disassemble(k_dir, "DSDT", k["DSDT"])) == hotplug_part(disassemble(q_dir, "DSDT", q["DSDT"]))
    assert body_lines(disassemble(k_dir, "SRAT", k["SRAT"])) == body_lines(disassemble(q_dir, "SRAT", q["SRAT"]))
    gpe = [ln for ln in body_lines(disassemble(q_dir, "FACP", q["FACP"])) if "GPE0" in ln]
    assert gpe and all(ln in body_lines(disassemble(k_dir, "FACP", k["FACP"])) for ln in gpe)


def test_no_hotplug_no_srat_and_no_mhpc() -> None:
    t = acpi.build_tables(0x1000000, 1)
    assert "SRAT" not in t.tables and b"MHPC" not in t.blob
    assert b"MHPC" in acpi.build_dsdt(None, 2) and b"MP01" in acpi.build_dsdt(None, 2)


def test_pci_hole64_moves_past_the_hotplug_window() -> None:
    base, size = device_memory_window(0, 256 * MiB, 4 * GiB, 4)
    assert pci_holes(256 * MiB, base + size).high == (0x300000000, 0x37FFFFFFF)  # what QEMU's _CRS says

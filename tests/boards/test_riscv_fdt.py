"""The virt board's device tree against QEMU 7.2's (``-M virt,dumpdtb=``), both decompiled by dtc.

The trees must be equal except for an explicit list of differences, each for a
reason: the nodes of devices kvmpy's virt board does not have, the hart's ISA
and MMU (what kvmpy's translator implements), and the random rng-seed.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from kvmpy.boards.riscv_fdt import FDT_MAGIC, FdtWriter
from kvmpy.boards.riscv_virt import VirtBoard
from kvmpy.tcg.target.riscv.cpu import ISA_STRING

QEMU = "qemu-system-riscv64"
# Nodes QEMU's virt has and kvmpy's does not, with the reason each is left out.
ABSENT_NODES = {
    "pmu": "no hardware performance counters (mhpmcounter3..31 read zero)",
    "fw-cfg@10100000": "no fw_cfg device on the riscv board",
    "flash@20000000": "no pflash",
    "rtc@101000": "no goldfish RTC",
    "pci@30000000": "no PCIe host bridge on the riscv board",
}


def dts(blob: bytes, tmp_path, name: str) -> str:
    p = tmp_path / name
    p.write_bytes(blob)
    proc = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(p)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def qemu_dtb(tmp_path, memory: str, *extra: str, smp: int = 1) -> bytes:
    if shutil.which(QEMU) is None or shutil.which("dtc") is None:
        pytest.skip(f"{QEMU} or dtc not installed (apt-get install qemu-system-misc device-tree-compiler)")
    out = tmp_path / "qemu.dtb"
    subprocess.run([QEMU, "-M", f"virt,dumpdtb={out}", "-m", memory, "-smp", str(smp), "-nographic", *extra],
                   capture_output=True, timeout=60, check=True)
    return out.read_bytes()


def drop_nodes(text: str, names: set[str]) -> tuple[str, set[str]]:
    """``text`` without the named nodes (and the blank line after each); also the names found."""
    lines, out, found, i = text.splitlines(), [], set(), 0
    while i < len(lines):
        m = re.match(r"^(\t+)(\S+) \{$", lines[i])
        if m and m.group(2) in names:
            found.add(m.group(2))
            indent = m.group(1)
            while lines[i] != indent + "};":
                i += 1
            i += 1
            if i < len(lines) and lines[i] == "":
                i += 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out), found


def normalise(text: str) -> str:
    return re.sub(r"rng-seed = <[^>]*>", "rng-seed = <SEED>", text)


@pytest.mark.parametrize("memory,extra,smp", [("128M", (), 1), ("1G", (), 1), ("128M", (), 2), ("256M", (), 4)])
def test_tree_matches_qemu_but_for_the_listed_differences(tmp_path, memory, extra, smp):
    """With -smp N: a cpu node per hart, cpu-map's cores, every hart's contexts in the CLINT's and
    PLIC's interrupts-extended, and QEMU's phandle numbers."""
    size = {"128M": 128 << 20, "256M": 256 << 20, "1G": 1 << 30}[memory]
    ours = dts(VirtBoard(size, harts=smp, tier="py").device_tree(), tmp_path, "kvmpy.dtb")
    theirs = dts(qemu_dtb(tmp_path, memory, *extra, smp=smp), tmp_path, "qemu.dtb")
    theirs, found = drop_nodes(theirs, set(ABSENT_NODES))
    assert found == set(ABSENT_NODES), "QEMU's tree changed: review the list of absent nodes"
    assert ours.count("cpu@") == smp
    theirs = re.sub(r'riscv,isa = "[^"]*"', f'riscv,isa = "{ISA_STRING}"', theirs)
    theirs = theirs.replace('mmu-type = "riscv,sv48"', 'mmu-type = "riscv,sv39"')
    assert normalise(ours).strip() == normalise(theirs).strip()


def test_bootargs_sit_where_qemu_puts_them(tmp_path):
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(bytes(4096))
    theirs = dts(qemu_dtb(tmp_path, "128M", "-bios", "none", "-kernel", str(kernel), "-append", "console=ttyS0 x"),
                 tmp_path, "qemu.dtb")
    ours = dts(VirtBoard(128 << 20).device_tree("console=ttyS0 x"), tmp_path, "kvmpy.dtb")
    chosen = re.compile(r"\tchosen \{.*?\n\t\};", re.S)
    assert normalise(chosen.search(ours).group()) == normalise(chosen.search(theirs).group())


def test_isa_string_names_what_the_translator_implements():
    base, *exts = ISA_STRING.split("_")
    assert base == "rv64imafdc"        # misa's letters but S and U, which the ISA string leaves out
    assert "sstc" in exts and not any(e.startswith("zb") for e in exts)     # Sstc yes; no H, no bit-manip


def test_rng_seed_is_fresh_each_time():
    board = VirtBoard(4 << 20)
    assert board.device_tree() != board.device_tree()
    assert board.device_tree(rng_seed=bytes(32)) == board.device_tree(rng_seed=bytes(32))


def test_writer_header_and_misuse():
    w = FdtWriter()
    w.begin_node("")
    w.prop_u32("x", 1)
    w.end_node()
    blob = w.finish()
    magic, total, off_struct, off_strings, off_rsv, version, last = struct.unpack(">7I", blob[:28])
    assert (magic, total, version, last) == (FDT_MAGIC, len(blob), 17, 16)
    assert off_rsv == 40 and blob[off_rsv:off_rsv + 16] == bytes(16) and blob[off_strings:] == b"x\0"
    with pytest.raises(ValueError):
        FdtWriter().end_node()
    with pytest.raises(ValueError):
        FdtWriter().prop("x")
    w = FdtWriter()
    w.begin_node("")
    with pytest.raises(ValueError):
        w.finish()


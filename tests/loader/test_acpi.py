"""ACPI tables: lengths, checksums, cross-pointers, and the real iasl disassembler as an oracle."""

import re
import shutil
import struct
import subprocess

import pytest

from kvmpy.loader import acpi
from kvmpy.loader.e820 import pci_holes

BASE = 0x7FE0000


def _table_at(t: acpi.AcpiTables, addr: int) -> bytes:
    off = addr - t.base
    length, = struct.unpack_from("<I", t.blob, off + 4)
    return t.blob[off:off + length]


@pytest.mark.parametrize("ncpus", [1, 2, 8])
def test_tables_checksum_and_point_at_each_other(ncpus):
    t = acpi.build_tables(BASE, ncpus)
    rsdp = t.rsdp
    assert rsdp[:8] == b"RSD PTR " and len(rsdp) == 36
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    rsdt_addr, length, xsdt_addr = struct.unpack_from("<IIQ", rsdp, 16)
    assert length == 36
    xsdt = _table_at(t, xsdt_addr)
    rsdt = _table_at(t, rsdt_addr)
    assert xsdt[:4] == b"XSDT" and rsdt[:4] == b"RSDT"
    x_entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    r_entries = struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36)
    assert list(x_entries) == list(r_entries)
    sigs = {_table_at(t, a)[:4] for a in x_entries}
    assert sigs == {b"FACP", b"APIC"}
    for a in (*x_entries, xsdt_addr, rsdt_addr):
        assert sum(_table_at(t, a)) % 256 == 0
    fadt = _table_at(t, t.tables["FACP"])
    assert len(fadt) == acpi.FADT_LENGTH
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert (facs, dsdt) == struct.unpack_from("<QQ", fadt, 132)
    assert facs % 64 == 0 and _table_at(t, facs)[:4] == b"FACS" and len(_table_at(t, facs)) == 64
    assert _table_at(t, dsdt)[:4] == b"DSDT" and sum(_table_at(t, dsdt)) % 256 == 0
    assert struct.unpack_from("<IIII", fadt, 56) == (acpi.PM1_EVT_BLK, 0, acpi.PM1_CNT_BLK, 0)
    # One enabled local APIC entry per vCPU, with APIC IDs 0..n-1.
    madt = _table_at(t, t.tables["APIC"])
    pos, apics = 44, []
    while pos < len(madt):
        kind, ln = madt[pos], madt[pos + 1]
        assert ln >= 2
        if kind == acpi.MADT_LAPIC:
            apics.append((madt[pos + 3], struct.unpack_from("<I", madt, pos + 4)[0]))
        pos += ln
    assert pos == len(madt)
    assert apics == [(i, 1) for i in range(ncpus)]


def test_base_must_be_aligned():
    with pytest.raises(ValueError):
        acpi.build_tables(BASE + 8, 1)


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (apt-get install acpica-tools) not installed")
def test_iasl_decodes_tables(tmp_path):
    t = acpi.build_tables(BASE, 2)
    files = {}
    for sig, addr in t.tables.items():
        if sig == "FACS":
            continue
        files[sig] = tmp_path / f"{sig.lower()}.dat"
        files[sig].write_bytes(_table_at(t, addr))
    out = {}
    for sig, path in files.items():
        res = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        out[sig] = path.with_suffix(".dsl").read_text()
        assert "Invalid" not in out[sig] and "**** " not in out[sig], out[sig]
    assert "Name (_S5, Package (0x04)" in out["DSDT"]
    madt = out["APIC"]
    assert madt.count("Processor Enabled : 1") == 2
    assert "I/O APIC" in madt and "Interrupt Source Override" in madt
    fadt = out["FACP"]
    assert "PM1A Event Block Address : 00000600" in fadt and "PM Timer Block Address : 00000608" in fadt
    assert "Reset Register Supported (V2) : 1" in fadt
    # A fixed-feature power button is what system_powerdown presses (PWRBTN_STS in PM1).
    assert "Control Method Power Button (V1) : 0" in fadt
    assert "Address : 0000000000000CF9" in fadt


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (apt-get install acpica-tools) not installed")
@pytest.mark.parametrize("memory", [128 << 20, 0xE0000000, 6 << 30])
def test_iasl_decodes_the_pci_description(tmp_path, memory):
    holes = pci_holes(memory)
    t = acpi.build_tables(BASE, 1, holes)
    path = tmp_path / "dsdt.dat"
    path.write_bytes(_table_at(t, t.tables["DSDT"]))
    res = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Error" not in res.stdout + res.stderr, res.stdout + res.stderr
    dsl = path.with_suffix(".dsl").read_text()
    assert "Invalid" not in dsl and "**** " not in dsl, dsl
    assert 'Device (PCI0)' in dsl and 'EisaId ("PNP0A03")' in dsl
    assert "OperationRegion (P40C, PCI_Config, 0x60, 0x04)" in dsl and "Field (PCI0.ISA.P40C" in dsl
    for link in ("LNKA", "LNKB", "LNKC", "LNKD", "LNKS"):
        assert f"Device ({link})" in dsl
    assert dsl.count('EisaId ("PNP0C0F")') == 5
    assert_i8042_devices(dsl, "Device (ISA)")
    low_lo, low_hi = holes.low
    high_lo, high_hi = holes.high
    assert f"0x{low_lo:08X},         // Range Minimum" in dsl and "0xFEBFFFFF,         // Range Maximum" in dsl
    assert f"0x{high_lo:016X}, // Range Minimum" in dsl and f"0x{high_hi:016X}, // Range Maximum" in dsl
    # _PRT: 32 slots x 4 pins; INTA of slot 0 goes to LNKD, of slot 1 to LNKS (the SCI), of slot 2 to LNKB.
    prt = re.findall(r"\{\s*(0x[0-9A-F]+|Zero|One),\s*(Zero|One|0x0[23]),\s*(LNK\w),\s*Zero\s*\}", dsl)
    assert len(prt) == 128
    assert prt[0] == ("0xFFFF", "Zero", "LNKD") and prt[4] == ("0x0001FFFF", "Zero", "LNKS")
    assert prt[8] == ("0x0002FFFF", "Zero", "LNKB") and prt[13] == ("0x0003FFFF", "One", "LNKD")


def assert_i8042_devices(dsl: str, parent: str) -> None:
    """KBD (PNP0303: 0x60, 0x64, IRQ 1) and MOU (PNP0F13: IRQ 12) under ``parent``, as QEMU's DSDT has them;
    SeaBIOS sets up its PS/2 keyboard (and so its boot menu's keys) only when it finds PNP0303."""
    dsl = re.sub(r"\s*//[^\n]*", "", dsl)
    kbd, mou = dsl.index("Device (KBD)"), dsl.index("Device (MOU)")
    assert dsl.index(parent) < kbd < mou
    assert 'EisaId ("PNP0303")' in dsl[kbd:mou] and 'EisaId ("PNP0F13")' in dsl[mou:]
    assert "Name (_STA, 0x0F)" in dsl[kbd:mou] and "Name (_STA, 0x0F)" in dsl[mou:]
    assert re.search(r"IO \(Decode16,\s*0x0060,\s*0x0060,\s*0x01,\s*0x01,?\s*\)", dsl[kbd:mou])
    assert re.search(r"IO \(Decode16,\s*0x0064,\s*0x0064,\s*0x01,\s*0x01,?\s*\)", dsl[kbd:mou])
    assert re.search(r"IRQNoFlags \(\)\s*\{1\}", dsl[kbd:mou]) and re.search(r"IRQNoFlags \(\)\s*\{12\}", dsl[mou:])


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (apt-get install acpica-tools) not installed")
def test_iasl_decodes_the_i8042_without_pci(tmp_path):
    path = tmp_path / "dsdt.dat"
    t = acpi.build_tables(BASE, 1)
    path.write_bytes(_table_at(t, t.tables["DSDT"]))
    res = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_i8042_devices(path.with_suffix(".dsl").read_text(), "Scope (\\_SB)")


def test_prt_links_follow_piix3_routing():
    from kvmpy.devices.pci.piix3 import pirq_of
    for slot in range(32):
        for pin in range(4):
            if (slot, pin) != (1, 0):
                assert acpi.prt_link(slot, pin) == "LNK" + "ABCD"[pirq_of(slot, pin)]

"""ACPI tables: lengths, checksums, cross-pointers, and the real iasl disassembler as an oracle."""

import shutil
import struct
import subprocess

import pytest

from kvmpy.loader import acpi

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

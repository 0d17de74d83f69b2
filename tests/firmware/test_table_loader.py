"""The table-loader script, run the way SeaBIOS's romfile_loader runs it, yields valid linked ACPI tables."""

from __future__ import annotations

import struct

from kvmpy.firmware import table_loader
from kvmpy.firmware.pc_fw_cfg import fw_e820, pc_fw_cfg
from kvmpy.loader import acpi
from kvmpy.loader.e820 import pci_holes


def run_script(files: dict[str, bytes], script: bytes, places: dict[int, int]) -> dict[str, tuple[int, bytearray]]:
    """A Python rendering of SeaBIOS's romfile_loader_execute: zone -> base address for the allocations."""
    out: dict[str, tuple[int, bytearray]] = {}
    assert len(script) % 128 == 0
    for pos in range(0, len(script), 128):
        cmd = script[pos:pos + 128]
        kind = struct.unpack_from("<I", cmd)[0]
        name = lambda off: cmd[off:off + 56].rstrip(b"\0").decode()  # noqa: E731
        if kind == table_loader.CMD_ALLOCATE:
            align, zone = struct.unpack_from("<IB", cmd, 60)
            base = places[zone]
            base = (base + align - 1) // align * align
            places[zone] = base + len(files[name(4)])
            out[name(4)] = (base, bytearray(files[name(4)]))
        elif kind == table_loader.CMD_ADD_POINTER:
            offset, size = struct.unpack_from("<IB", cmd, 116)
            dest = out[name(4)][1]
            value = int.from_bytes(dest[offset:offset + size], "little") + out[name(60)][0]
            dest[offset:offset + size] = value.to_bytes(size, "little")
        elif kind == table_loader.CMD_ADD_CHECKSUM:
            offset, start, length = struct.unpack_from("<III", cmd, 60)
            data = out[name(4)][1]
            data[offset] = (data[offset] - sum(data[start:start + length])) & 0xFF
        else:
            raise AssertionError(f"unknown command {kind}")
    return out


def test_script_links_and_checksums_every_table() -> None:
    tables = acpi.build_tables(0, 2, pci_holes(256 << 20))
    files = table_loader.build(tables)
    placed = run_script({table_loader.TABLES_FILE: files.tables, table_loader.RSDP_FILE: files.rsdp},
                        files.loader, {table_loader.ZONE_HIGH: 0x0FFE0010, table_loader.ZONE_FSEG: 0xF5A01})
    base, blob = placed[table_loader.TABLES_FILE]
    rsdp_at, rsdp = placed[table_loader.RSDP_FILE]
    assert base % 64 == 0 and rsdp_at % 16 == 0 and 0xF0000 <= rsdp_at < 0x100000
    assert sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0

    def at(addr: int) -> bytes:
        off = addr - base
        assert 0 <= off < len(blob)
        length = struct.unpack_from("<I", blob, off + 4)[0]
        table = bytes(blob[off:off + length])
        if table[:4] != b"FACS":
            assert sum(table) & 0xFF == 0, table[:4]
        return table

    rsdt = at(struct.unpack_from("<I", rsdp, 16)[0])
    xsdt = at(struct.unpack_from("<Q", rsdp, 24)[0])
    entries = struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36)
    assert entries == struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    sigs = {at(a)[:4]: at(a) for a in entries}
    assert set(sigs) == {b"FACP", b"APIC"}
    fadt = sigs[b"FACP"]
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert struct.unpack_from("<QQ", fadt, 132) == (facs, dsdt)
    assert at(facs)[:4] == b"FACS" and facs % 64 == 0
    assert at(dsdt)[:4] == b"DSDT"
    # The MADT lists both CPUs; the bytes other than pointers and checksums are the builder's.
    assert sigs[b"APIC"][44:44 + 16].count(bytes([0, 8])) == 2


def test_pc_fw_cfg_contents() -> None:
    tables = acpi.build_tables(0, 1)
    fw = pc_fw_cfg(None, 4 << 30, 2, tables, serial_console=True)  # type: ignore[arg-type]
    e820 = fw.file_data("etc/e820")
    assert e820 == fw_e820(4 << 30)
    assert [struct.unpack_from("<QQI", e820, i) for i in range(0, len(e820), 20)] == [
        (0, 0xC0000000, 1), (0xFEFFC000, 0x4000, 2), (1 << 32, 1 << 30, 1)]
    assert fw.file_data("etc/sercon-port") == b"\xf8\x03"
    assert fw.file_data("bootorder") == b""
    assert fw.file_data("etc/table-loader") is not None
    assert pc_fw_cfg(None, 1 << 28, 1, tables, serial_console=False).file_data("etc/sercon-port") is None  # type: ignore[arg-type]

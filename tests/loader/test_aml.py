"""AML encoders: integers, names, package lengths and resource descriptors, byte for byte from the ACPI spec."""

from __future__ import annotations

import pytest

from kvmpy.loader import aml


@pytest.mark.parametrize("value,encoded", [(0, "00"), (1, "01"), (5, "0a05"), (0x1234, "0b3412"),
                                           (0xFEBFFFFF, "0cffffbffe"), (1 << 32, "0e0000000001000000")])
def test_integers_use_the_shortest_encoding(value, encoded):
    assert aml.integer(value).hex() == encoded


@pytest.mark.parametrize("content,encoded", [(0, "01"), (0x3E, "3f"), (0x3F, "4104"), (0xFFD, "4fff"),
                                             (0xFFE, "810001"), (0xFFFFC, "8fffff"), (0xFFFFD, "c1000001")])
def test_package_length_counts_its_own_bytes(content, encoded):
    assert aml.pkg_length(content).hex() == encoded


def test_name_strings():
    assert aml.name_string("_S5") == b"_S5_"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("^PX13.P13C") == b"^\x2ePX13P13C"
    assert aml.name_string("PCI0.ISA.P40C") == b"\x2f\x03PCI0ISA_P40C"
    with pytest.raises(ValueError):
        aml.name_string("bad!")


def test_eisa_id_and_descriptors():
    assert aml.eisaid("PNP0A03").hex() == "0c41d00a03"
    assert aml.eisaid("PNP0C0F").hex() == "0c41d00c0f"
    assert aml.interrupt([5, 10, 11]).hex() == "890e00090305000000" "0a000000" "0b000000"
    assert aml.io_port(0xCF8, 8).hex() == "4701f80cf80c0108"
    assert aml.irq_no_flags([1]).hex() == "220200" and aml.irq_no_flags([12]).hex() == "220010"
    with pytest.raises(ValueError):
        aml.irq_no_flags([16])
    assert aml.resource_template().hex() == "11050a02" "7900"  # Buffer (2) { End Tag }
    assert len(aml.dword_memory(0xA0000, 0xBFFFF, True)) == 26
    assert len(aml.qword_memory(1 << 32, (1 << 33) - 1, True)) == 46


def test_integers_out_of_range_are_refused():
    with pytest.raises(ValueError):
        aml.integer(-1)
    with pytest.raises(ValueError):
        aml.package(*[aml.integer(0)] * 256)

"""Size parsing and printing as qemu-img does them."""

from __future__ import annotations

import pytest

from kvmpy.block.errors import BlockError
from kvmpy.block.sizes import human_size, parse_size


@pytest.mark.parametrize("text,value", [("512", 512), ("1k", 1024), ("1K", 1024), ("2M", 2 << 20),
                                        ("1.5G", 3 << 29), ("1T", 1 << 40), ("0", 0),
                                        ("64b", 64)])
def test_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "-1", "1X", "G", "1e3", "99999999999E"])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(BlockError):
        parse_size(bad)


@pytest.mark.parametrize("value,text", [(0, "0 B"), (512, "512 B"), (1023, "0.999 KiB"),
                                        (208896, "204 KiB"), (1 << 30, "1 GiB"),
                                        (1536, "1.5 KiB"), (3 << 40, "3 TiB")])
def test_human(value: int, text: str) -> None:
    assert human_size(value) == text

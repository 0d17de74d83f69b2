"""read_boot_file: whole files, with a size bound and one-line errors naming the file."""

from pathlib import Path

import pytest

from kvmpy.loader.errors import LoaderError
from kvmpy.loader.files import MAX_BOOT_FILE, read_boot_file


def test_reads_the_whole_file(tmp_path: Path) -> None:
    f = tmp_path / "mod.bin"
    f.write_bytes(b"module data")
    assert read_boot_file(f, "multiboot module") == b"module data"


def test_a_file_past_the_bound_is_refused_without_reading_it(tmp_path: Path) -> None:
    f = tmp_path / "huge"
    with open(f, "wb") as fh:
        fh.truncate(MAX_BOOT_FILE + 1)  # sparse: nothing is allocated or read
    with pytest.raises(LoaderError, match=r"huge: 1073741825 bytes is too large for a initrd"):
        read_boot_file(f, "initrd")


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match=r"cannot read kernel .*/nope: No such file or directory"):
        read_boot_file(tmp_path / "nope", "kernel")

"""memory-backend-ram/-file: RAMBlocks from anonymous memory and from files, QEMU's errors."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from kvmpy.memory.backend import BackendError, Backends, create_backend

MiB = 1 << 20


def test_ram_backend_is_a_ramblock_named_by_its_qom_path() -> None:
    b = create_backend("memory-backend-ram", "mem0", {"size": 4 * MiB})
    assert (b.size, b.block.size, b.block.name, b.path) == (4 * MiB, 4 * MiB, "/objects/mem0", "/objects/mem0")
    b.block.mv[0:4] = b"abcd"
    assert b.block.take_vmm_dirty().sum() == 0  # dirty bits come from KVM and VMM writes, not raw stores
    b.block.mark_dirty(0, 4)
    assert b.block.take_vmm_dirty()[0]
    assert b.align == 2 * MiB


def _mapping_flags(addr: int) -> str:
    """The rwxp/rwxs permissions /proc/self/maps gives the mapping at ``addr``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= addr < hi:
            return perms
    raise AssertionError(f"{addr:#x} is not mapped")


@pytest.mark.parametrize("share, perms", [(False, "rw-p"), (True, "rw-s")])
def test_ram_backend_share_on_is_shared_memory_as_in_qemu(share: bool, perms: str) -> None:
    """QEMU maps memory-backend-ram,share=on MAP_SHARED|MAP_ANONYMOUS (it stayed private here before)."""
    b = create_backend("memory-backend-ram", "mem0", {"size": 4 * MiB, "share": share})
    assert b.share is share and _mapping_flags(b.block.host_addr) == perms


def test_string_properties_from_the_command_line() -> None:
    b = create_backend("memory-backend-ram", "m", {"size": "8M", "prealloc": "on"})
    assert (b.size, b.prealloc) == (8 * MiB, True)


def test_shared_file_backend_is_visible_to_another_mapping(tmp_path: Path) -> None:
    path = tmp_path / "guest.ram"
    b = create_backend("memory-backend-file", "f", {"size": 2 * MiB, "mem-path": str(path), "share": True})
    b.block.mv[4096:4100] = b"ping"  # as the guest writes it
    with open(path, "r+b") as f:
        other = mmap.mmap(f.fileno(), 2 * MiB)
        assert other[4096:4100] == b"ping"
        other[0:4] = b"pong"  # and another process's write reaches the guest
    assert bytes(b.block.mv[0:4]) == b"pong"
    assert path.stat().st_size == 2 * MiB


def test_private_file_backend_does_not_write_the_file(tmp_path: Path) -> None:
    path = tmp_path / "priv"
    b = create_backend("memory-backend-file", "p", {"size": 1 * MiB, "mem-path": str(path)})
    b.block.mv[0:4] = b"priv"
    assert path.read_bytes()[:4] == b"\0\0\0\0"


def test_directory_mem_path_gets_an_unlinked_file(tmp_path: Path) -> None:
    b = create_backend("memory-backend-file", "d", {"size": 1 * MiB, "mem-path": str(tmp_path), "share": "on"})
    assert list(tmp_path.iterdir()) == []
    b.block.mv[0] = 7
    assert b.block.mv[0] == 7


@pytest.mark.parametrize("qom_type,props,message", [
    ("memory-backend-ram", {"size": 0}, "property 'size' of memory-backend-ram doesn't take value '0'"),
    ("memory-backend-ram", {}, "Parameter 'size' is missing"),
    ("memory-backend-bogus", {"size": 4096}, "Parameter 'qom-type' does not accept value 'memory-backend-bogus'"),
    ("memory-backend-file", {"size": 4096}, "Parameter 'mem-path' is missing"),
    ("memory-backend-file", {"size": MiB, "mem-path": "/nonexistent/dir/x"},
     "can't open backing store /nonexistent/dir/x for guest RAM: No such file or directory"),
    ("memory-backend-ram", {"size": MiB, "colour": "red"}, "Property 'memory-backend-ram.colour' not found"),
])
def test_qemu_errors(qom_type: str, props: dict, message: str) -> None:
    with pytest.raises(BackendError) as exc:
        create_backend(qom_type, "x", props)
    assert str(exc.value) == message


def test_registry_refuses_duplicates_and_deleting_a_used_backend() -> None:
    reg = Backends()
    b = reg.add("memory-backend-ram", "mem1", {"size": MiB})
    with pytest.raises(BackendError, match="attempt to add duplicate property 'mem1' to object"):
        reg.add("memory-backend-ram", "mem1", {"size": MiB})
    b.used_by = "d0"
    with pytest.raises(BackendError, match="object 'mem1' is in use, can not be deleted"):
        reg.delete("mem1")
    with pytest.raises(BackendError, match="object 'nosuch' not found"):
        reg.delete("nosuch")
    b.used_by = None
    reg.delete("mem1")
    assert "mem1" not in reg


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_tmpfs_backend_with_prealloc() -> None:
    b = create_backend("memory-backend-file", "t", {"size": 4 * MiB, "mem-path": "/dev/shm", "prealloc": True})
    assert b.block.page_size == 4096 and b.block.mv[0] == 0

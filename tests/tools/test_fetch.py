"""Fetching kernels and busybox through apt into the cache (real apt-get, real dpkg)."""

import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from kvmpy.tools.fetch import (FetchError, cache_root, fetch_busybox, fetch_kernel, is_static_elf,
                               resolve_kernel_package)
from kvmpy.tools.initramfs import InitramfsError, ModuleTree

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg") is None,
                                reason="needs apt-get and dpkg (Debian)")


def test_cache_root_honours_kvmpy_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KVMPY_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("KVMPY_CACHE")
    assert cache_root() == Path.home() / ".cache" / "kvmpy"


@pytest.mark.parametrize("flavor", ["amd64", "cloud-amd64"])
def test_meta_package_resolves_to_a_concrete_kernel(flavor: str) -> None:
    assert re.fullmatch(rf"linux-image-6\.\d+\.\d+-\d+-{flavor}", resolve_kernel_package(flavor))


@pytest.mark.parametrize("flavor", ["", "amd64; rm -rf /", "../x", "-amd64"])
def test_bad_flavor_is_refused(flavor: str) -> None:
    with pytest.raises(FetchError, match="bad kernel flavor"):
        resolve_kernel_package(flavor)


@pytest.mark.parametrize("flavor", ["amd64", "cloud-amd64"])
def test_fetch_kernel_unpacks_vmlinuz_and_modules(flavor: str) -> None:
    k = fetch_kernel(flavor)  # the shared cache: the bed and later tests reuse it
    assert k.package == resolve_kernel_package(flavor)
    assert k.version.endswith(flavor) and k.package == f"linux-image-{k.version}"
    assert k.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"
    assert k.modules_dir == k.root / "lib" / "modules" / k.version
    tree = ModuleTree(k.modules_dir)
    assert tree.path("virtio_blk").name == "virtio_blk.ko"
    if flavor == "amd64":
        assert tree.path("kvm_amd") == tree.path("kvm-amd")
        assert tree.path("9p").exists()
    with pytest.raises(InitramfsError, match="no module"):
        tree.path("no_such_module_xyz")
    # Second call: served from the cache, nothing re-downloaded.
    before = k.root.stat().st_mtime_ns
    t0 = time.monotonic()
    again = fetch_kernel(flavor)
    assert again == k and k.root.stat().st_mtime_ns == before
    assert time.monotonic() - t0 < 10


def test_host_busybox_is_used_when_static() -> None:
    host = Path("/bin/busybox")
    if not (host.exists() and is_static_elf(host)):
        pytest.skip("no static host busybox (apt: busybox-static)")
    assert fetch_busybox() == host


def test_is_static_elf() -> None:
    assert not is_static_elf(Path(sys.executable).resolve())  # a dynamically linked ELF
    assert not is_static_elf(Path(__file__))                  # not an ELF at all
    assert not is_static_elf(Path("/nonexistent"))


def _fetch_busybox_into(cache: str, q: "multiprocessing.Queue[str]") -> None:
    try:
        q.put(str(fetch_busybox(Path(cache), candidates=())))
    except Exception as exc:  # reported to the parent, which fails the test
        q.put(f"error: {exc}")


def test_concurrent_fetches_share_one_atomic_unpack(tmp_path: Path) -> None:
    # busybox-static is a small package: it exercises the same lock + rename as a kernel.
    ctx = multiprocessing.get_context("spawn")
    q: "multiprocessing.Queue[str]" = ctx.Queue()
    procs = [ctx.Process(target=_fetch_busybox_into, args=(str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1] == str(tmp_path / "busybox-static" / "bin" / "busybox"), results
    assert is_static_elf(Path(results[0]))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    # A later call reuses the unpacked copy.
    mtime = (tmp_path / "busybox-static").stat().st_mtime_ns
    assert fetch_busybox(tmp_path, candidates=()) == Path(results[0])
    assert (tmp_path / "busybox-static").stat().st_mtime_ns == mtime
    assert os.access(results[0], os.X_OK)

"""The L1 initramfs, built from the real Debian kernel and busybox and read back with cpio."""

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.testbed.l1_initramfs import L1_MODULES, build_l1_initramfs, l1_init_script
from kvmpy.tools.fetch import KernelPackage, fetch_busybox, fetch_kernel
from kvmpy.tools.initramfs import InitramfsError, module_depends, module_key

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None or shutil.which("apt-get") is None,
                                reason="needs cpio and apt-get")


@pytest.fixture(scope="module")
def kernel() -> KernelPackage:
    return fetch_kernel("amd64")


@pytest.fixture(scope="module")
def built(kernel: KernelPackage, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("initramfs")
    image = build_l1_initramfs(kernel, fetch_busybox(), out)
    tree = out / "tree"
    tree.mkdir()
    # Skip the device nodes: creating them needs privileges a test should not rely on.
    names = subprocess.run(["cpio", "-t", "--quiet"], input=gzip.decompress(image.read_bytes()),
                           capture_output=True, check=True).stdout.decode().split()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames",
                    *[n for n in names if not n.startswith("dev/")]],
                   input=gzip.decompress(image.read_bytes()), cwd=tree, check=True)
    return image, tree


def test_initramfs_holds_busybox_init_and_modules(built: tuple[Path, Path]) -> None:
    image, tree = built
    assert (tree / "bin/busybox").read_bytes() == fetch_busybox().read_bytes()
    assert (tree / "bin/sh").is_symlink()
    init = (tree / "init").read_text()
    assert init.startswith("#!/bin/sh") and (tree / "init").stat().st_mode & 0o111
    for m in L1_MODULES:
        assert (tree / "lib/modules" / f"{module_key(m)}.ko").read_bytes()[:4] == b"\x7fELF", m
    listing = subprocess.run(["cpio", "-tv", "--quiet"], input=gzip.decompress(image.read_bytes()),
                             capture_output=True, check=True).stdout.decode()
    console = [line for line in listing.splitlines() if line.endswith("dev/console")]
    assert console and console[0].startswith("c") and "5," in console[0]


def test_init_script_is_valid_shell(built: tuple[Path, Path]) -> None:
    _, tree = built
    subprocess.run([str(fetch_busybox()), "sh", "-n", str(tree / "init")], check=True)


def test_modules_are_loaded_after_their_dependencies(built: tuple[Path, Path], kernel: KernelPackage) -> None:
    _, tree = built
    line = next(l for l in (tree / "init").read_text().splitlines() if l.startswith("pending="))
    order = line.split('"')[1].split()
    assert set(order) >= {module_key(m) for m in L1_MODULES}  # and whatever they depend on
    pos = {m: i for i, m in enumerate(order)}
    for m in order:
        for dep in module_depends((tree / "lib/modules" / f"{m}.ko").read_bytes()):
            assert pos[module_key(dep)] < pos[m], (dep, m)
    assert set(module_depends((tree / "lib/modules/kvm_amd.ko").read_bytes())) >= {"kvm"}


def test_init_script_mounts_and_reports(built: tuple[Path, Path]) -> None:
    init = (built[1] / "init").read_text()
    assert "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose host /host" in init
    for target in ("/host/dev", "/host/proc", "/host/sys"):
        assert f"mount -o bind {target[5:]} {target}" in init
    assert "mount -t tmpfs -o mode=1777 tmpfs /host/tmp" in init
    # The job's root is the host root moved onto / in its own mount namespace (not a chroot).
    assert "unshare -m /bin/sh -c 'cd /host && mount -o move /host / && exec chroot . /bin/sh" in init
    assert "chroot /host" not in init
    assert 'echo "kvmpy-bed[$nonce]: exit $rc' in init and "poweroff -f" in init


def test_initramfs_is_cached_by_content(built: tuple[Path, Path], kernel: KernelPackage) -> None:
    image, _ = built
    mtime = image.stat().st_mtime_ns
    assert build_l1_initramfs(kernel, fetch_busybox(), image.parent) == image
    assert image.stat().st_mtime_ns == mtime
    other = build_l1_initramfs(kernel, fetch_busybox(), image.parent, host_cache="none")
    assert other != image and other.exists()


def test_bad_inputs_are_refused(kernel: KernelPackage, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        l1_init_script(("kvm; reboot",))
    with pytest.raises(ValueError):
        l1_init_script(host_cache="loose,rw")
    with pytest.raises(InitramfsError, match="no module 'no_such_mod'"):
        build_l1_initramfs(kernel, fetch_busybox(), tmp_path, modules=("kvm", "no_such_mod"))
    assert not list(tmp_path.iterdir())

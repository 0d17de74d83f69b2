"""QEMU-compatible image locking: kvmpy and the real qemu-io / qemu-system refuse each other's images."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kvmpy.block.errors import BlockError
from kvmpy.block.image import open_image
from kvmpy.block.locking import ImageLockError, LockRequest, Perm
from tests.block.conftest import QEMU_IO, locks_of, needs_qemu_img, needs_qemu_io, qemu_check, qemu_img

QEMU_SYSTEM = shutil.which("qemu-system-x86_64")


class Holder:
    """A real QEMU process holding an image open until stopped."""

    def __init__(self, argv: list[str], path: Path, want: int = 100) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while want not in locks_of(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"QEMU did not lock {path}: {self.proc.stderr.read()!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def qemu_io_holder(path: Path, fmt: str, readonly: bool = False) -> Holder:
    return Holder([QEMU_IO, *(["-r"] if readonly else []), "-f", fmt, str(path)], path)


def qemu_io_try(path: Path, fmt: str, readonly: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QEMU_IO, *(["-r"] if readonly else []), "-f", fmt, "-c", "read 0 512",
                           str(path)], capture_output=True, text=True)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    qemu_img("create", "-f", "raw", tmp_path / "r.img", "1M")
    qemu_img("create", "-f", "qcow2", tmp_path / "base.qcow2", "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", tmp_path / "top.qcow2")
    return {"raw": tmp_path / "r.img", "base": tmp_path / "base.qcow2", "top": tmp_path / "top.qcow2"}


def test_requests_match_qemu_table() -> None:
    R, W, Z = Perm.CONSISTENT_READ, Perm.WRITE, Perm.RESIZE
    assert LockRequest.for_image("raw", False) == LockRequest(R | W, W)
    assert LockRequest.for_image("raw", True) == LockRequest(R, W)
    assert LockRequest.for_image("qcow2", False) == LockRequest(R | W | Z, W | Z)
    assert LockRequest.for_image("qcow2", True) == LockRequest(R, W | Z)
    assert LockRequest.for_image("raw", False, backing=True) == LockRequest(R, W | Z)


@needs_qemu_img
def test_kvmpy_takes_the_bytes_qemu_takes(images: dict[str, Path]) -> None:
    with open_image(images["raw"], "raw", readonly=False, locking=True):
        assert locks_of(images["raw"]) == {100, 101, 201}
    assert locks_of(images["raw"]) == set()
    with open_image(images["top"], "qcow2", readonly=False, locking=True):
        assert locks_of(images["top"]) == {100, 101, 103, 201, 203}
        assert locks_of(images["base"]) == {100, 201, 203}
    with open_image(images["top"], "qcow2", readonly=True, locking=True):
        assert locks_of(images["top"]) == {100, 201, 203}


@needs_qemu_img
def test_two_kvmpy_writers_refused_readers_of_a_backing_file_shared(images: dict[str, Path]) -> None:
    with open_image(images["raw"], "raw", readonly=False, locking=True):
        with pytest.raises(ImageLockError) as e:
            open_image(images["raw"], "raw", readonly=False, locking=True)
        assert str(e.value) == ('Failed to get "write" lock\n'
                                f"Is another process using the image [{images['raw']}]?")
        with pytest.raises(ImageLockError, match='Failed to get shared "write" lock'):
            open_image(images["raw"], "raw", readonly=True, locking=True)
        # the image tools do not lock (as before) and are not refused
        open_image(images["raw"], "raw", readonly=True).close()
    # a backing file is shared read-only: two overlays over it both open
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", images["base"].parent / "t2.qcow2")
    with open_image(images["top"], readonly=False, locking=True), \
            open_image(images["base"].parent / "t2.qcow2", readonly=False, locking=True):
        # but nobody may write the backing file while it is in use
        with pytest.raises(BlockError, match='Failed to get "write" lock'):
            open_image(images["base"], readonly=False, locking=True)


@needs_qemu_io
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_kvmpy_refuses_an_image_qemu_io_writes(images: dict[str, Path], fmt: str) -> None:
    path = images["raw" if fmt == "raw" else "top"]
    with qemu_io_holder(path, fmt):
        # qemu-io holds write and (raw) shares everything: we refuse because we do not share write
        with pytest.raises(ImageLockError) as e:
            open_image(path, fmt, readonly=False, locking=True)
        assert 'Failed to get ' in str(e.value) and '"write" lock' in str(e.value)
        assert str(e.value).endswith(f"Is another process using the image [{path}]?")
    with open_image(path, fmt, readonly=False, locking=True):
        pass  # free again once qemu-io exits


@needs_qemu_io
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_qemu_io_refuses_an_image_kvmpy_writes(images: dict[str, Path], fmt: str) -> None:
    path = images["raw" if fmt == "raw" else "top"]
    with open_image(path, fmt, readonly=False, locking=True):
        r = qemu_io_try(path, fmt)
        assert r.returncode != 0
        assert 'Failed to get "write" lock' in r.stderr
        assert f"Is another process using the image [{path}]?" in r.stderr
        r = qemu_io_try(path, fmt, readonly=True)
        if fmt == "raw":  # qemu-io -r on a raw file shares write: QEMU lets it read
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode != 0 and 'Failed to get shared "write" lock' in r.stderr
            # the backing file is locked shared-read: QEMU may read it, not write it
            assert qemu_io_try(images["base"], "qcow2", readonly=True).returncode == 0
            r = qemu_io_try(images["base"], "qcow2")
            assert r.returncode != 0 and 'Failed to get "write" lock' in r.stderr
    assert qemu_io_try(path, fmt).returncode == 0


@needs_qemu_io
def test_readers_coexist_with_qemu(images: dict[str, Path]) -> None:
    with qemu_io_holder(images["top"], "qcow2", readonly=True):
        open_image(images["top"], "qcow2", readonly=True, locking=True).close()


@pytest.mark.skipif(QEMU_SYSTEM is None, reason="qemu-system-x86_64 not installed")
@needs_qemu_img
def test_kvmpy_and_qemu_system_refuse_each_other(images: dict[str, Path]) -> None:
    path = images["raw"]
    argv = [QEMU_SYSTEM, "-machine", "accel=tcg", "-display", "none", "-nodefaults", "-S",
            "-drive", f"file={path},format=raw,if=virtio"]
    with Holder(argv, path, want=201):
        with pytest.raises(ImageLockError, match='Failed to get "write" lock'):
            open_image(path, "raw", readonly=False, locking=True)
    with open_image(path, "raw", readonly=False, locking=True):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert 'Failed to get "write" lock\nIs another process using the image' in r.stderr


# ---- migration hand-over: inactive images (QEMU's BDRV_O_INACTIVE) ----------------------------------

def _pattern(tag: int, n: int = 65536) -> bytes:
    return bytes([tag]) * n


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_an_inactive_image_holds_no_lock_and_is_handed_over(images: dict[str, Path], fmt: str) -> None:
    """The two sides of a migration on one image: the destination opens inactive beside the running
    source (QEMU 7.2 was measured holding no lock byte there), the source flushes and drops its locks,
    the destination then locks and re-reads the image and sees what the source wrote after it opened."""
    from kvmpy.block.drive import open_drive

    path = images["raw" if fmt == "raw" else "top"]
    src = open_drive(path, fmt, id="src")
    try:
        src.write_from(0, [memoryview(_pattern(1))])
        dst = open_drive(path, fmt, id="dst", inactive=True)
        try:
            assert not dst.active and src.active
            held = {100, 101, 201} if fmt == "raw" else {100, 101, 103, 201, 203}
            assert locks_of(path) == held  # the source's only
            # The source allocates more after the destination read the metadata.
            src.write_from(1 << 19, [memoryview(_pattern(2))])
            with pytest.raises(ImageLockError, match='Failed to get "write" lock'):
                dst.activate()  # the source still owns it
            assert not dst.active and locks_of(path) == held
            with pytest.raises(BlockError, match="inactive"):
                dst.write_from(0, [memoryview(_pattern(9))])
            src.inactivate()
            assert not src.active and locks_of(path) == set()
            if fmt == "qcow2":
                assert locks_of(images["base"]) == set()
            with pytest.raises(BlockError, match="inactive"):
                src.write_from(0, [memoryview(_pattern(9))])
            dst.activate()
            assert dst.active and locks_of(path) == held
            if fmt == "qcow2":
                assert locks_of(images["base"]) == {100, 201, 203}
            out = bytearray(65536)
            dst.read_into(1 << 19, [memoryview(out)])
            assert bytes(out) == _pattern(2)
            dst.write_from(3 << 18, [memoryview(_pattern(3))])
            with pytest.raises(ImageLockError):
                src.activate()  # the destination owns it now; the source stays inactive
            assert not src.active
        finally:
            dst.close()
        src.close()  # closing an inactive image writes nothing
        if fmt == "qcow2":
            assert qemu_check(path).get("corruptions", 0) == 0 and qemu_check(path).get("leaks", 0) == 0
        for off, tag in ((0, 1), (1 << 19, 2), (3 << 18, 3)):
            r = subprocess.run([QEMU_IO or "qemu-io", "-f", fmt, "-c", f"read -P {tag} {off} 64k", str(path)],
                               capture_output=True, text=True)
            assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout
    finally:
        src.close()


@needs_qemu_img
def test_an_inactive_qcow2_never_repairs_or_rewrites_the_sources_image(tmp_path: Path) -> None:
    """With lazy refcounts the running source keeps the dirty bit set; a destination that opened read-write
    would 'repair' the image under it. Inactive, it only reads; the source clears the bit when it hands over."""
    from kvmpy.block.drive import open_drive
    from kvmpy.block import qcow2_format as fmt

    img = tmp_path / "lazy.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "4M")
    src = open_drive(img, "qcow2", id="src")
    dst = None
    try:
        src.write_from(0, [memoryview(_pattern(5))])
        before = img.read_bytes()
        dst = open_drive(img, "qcow2", id="dst", inactive=True)
        assert img.read_bytes() == before  # nothing written by the inactive open
        src.inactivate()
        header = fmt.parse_header(img.read_bytes()[:4096], img.stat().st_size)
        assert not header.incompatible_features & fmt.INCOMPAT_DIRTY
        dst.activate()
        out = bytearray(65536)
        dst.read_into(0, [memoryview(out)])
        assert bytes(out) == _pattern(5)
    finally:
        if dst is not None:
            dst.close()
        src.close()
    assert qemu_check(img).get("corruptions", 0) == 0


@needs_qemu_io
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_an_inactive_image_opens_beside_qemu_and_is_refused_activation(images: dict[str, Path], fmt: str) -> None:
    from kvmpy.block.drive import activate_drives, open_drive

    path = images["raw" if fmt == "raw" else "top"]
    with qemu_io_holder(path, fmt):
        dst = open_drive(path, fmt, id="dst", inactive=True)
        try:
            with pytest.raises(ImageLockError) as e:
                activate_drives([dst])
            assert str(e.value).endswith(f"Is another process using the image [{path}]?")
            assert not dst.active
        finally:
            dst.close()

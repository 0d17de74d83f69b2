"""Fetching Debian kernels and a static busybox into kvmpy's cache directory.

Kernels come from Debian packages: the meta package ``linux-image-<flavor>`` is
resolved to the concrete ``linux-image-6.1.0-N-<flavor>``, which is fetched with
``apt-get download`` and unpacked with ``dpkg -x`` (nothing gets installed). Each
unpack happens in a temporary directory that is renamed into place, under a file
lock, so concurrent test sessions and benchmarks share one cache safely.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_FLAVOR_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_APT_TIMEOUT_S = 900


class FetchError(RuntimeError):
    """A kernel or busybox could not be obtained; the message says why."""


@dataclass(frozen=True)
class KernelPackage:
    """An unpacked Debian kernel package."""

    flavor: str          # "amd64", "cloud-amd64"
    package: str         # "linux-image-6.1.0-56-amd64"
    version: str         # the kernel release, as `uname -r` prints it
    root: Path           # where the package was unpacked
    vmlinuz: Path
    modules_dir: Path    # root/lib/modules/<version>


def cache_root() -> Path:
    """The cache directory: $KVMPY_CACHE, else ~/.cache/kvmpy."""
    env = os.environ.get("KVMPY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kvmpy"


@contextlib.contextmanager
def cache_lock(cache: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` inside ``cache`` (blocks until free)."""
    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for the cache lock %s", locks / f"{name}.lock")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                              timeout=_APT_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise FetchError(f"{argv[0]} is not installed ({exc}); it is needed to fetch packages") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{' '.join(argv)} did not finish within {_APT_TIMEOUT_S} s") from exc


def _apt_update() -> None:
    log.info("running apt-get update (package lists are missing or stale)")
    res = _run(["apt-get", "update"])
    if res.returncode != 0:
        raise FetchError(f"apt-get update failed: {res.stderr.strip()[-500:]}")


def _apt_download(package: str, dest: Path) -> Path:
    """Download ``package``'s .deb into ``dest``; refresh the lists once if apt cannot find it."""
    for attempt in (1, 2):
        res = _run(["apt-get", "download", package], cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if res.returncode == 0 and debs:
            return debs[-1]
        if attempt == 1:
            log.info("apt-get download %s failed (%s); refreshing lists", package,
                     res.stderr.strip().splitlines()[-1:] or "no message")
            _apt_update()
    raise FetchError(f"apt-get download {package} failed: {res.stderr.strip()[-500:]}")


def resolve_kernel_package(flavor: str) -> str:
    """Map ``linux-image-<flavor>`` to the concrete package it depends on."""
    if not _FLAVOR_RE.match(flavor):
        raise FetchError(f"bad kernel flavor {flavor!r}")
    meta = f"linux-image-{flavor}"
    pattern = re.compile(rf"^\s*Depends:\s*(linux-image-\d[\w.+-]*-{re.escape(flavor)})\s*$")
    for attempt in (1, 2):
        res = _run(["apt-cache", "depends", meta])
        for line in res.stdout.splitlines():
            m = pattern.match(line)
            if m:
                return m.group(1)
        if attempt == 1:
            _apt_update()
    raise FetchError(f"cannot resolve {meta} to a concrete kernel package: "
                     f"{(res.stderr or res.stdout).strip()[-300:]}")


def _kernel_from_dir(flavor: str, package: str, root: Path) -> KernelPackage:
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise FetchError(f"{package} unpacked into {root} holds no boot/vmlinuz-*")
    vmlinuz = images[-1]
    version = vmlinuz.name[len("vmlinuz-"):]
    modules_dir = root / "lib" / "modules" / version
    if not modules_dir.is_dir():
        raise FetchError(f"{package} has no modules directory lib/modules/{version}")
    return KernelPackage(flavor, package, version, root, vmlinuz, modules_dir)


def _unpack_package(package: str, dest: Path, cache: Path) -> None:
    """apt-get download + dpkg -x ``package`` into ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".tmp-{package}-") as tmp:
        tmpdir = Path(tmp)
        log.info("downloading %s into %s", package, cache)
        deb = _apt_download(package, tmpdir)
        unpacked = tmpdir / "root"
        res = _run(["dpkg", "-x", str(deb), str(unpacked)])
        if res.returncode != 0:
            raise FetchError(f"dpkg -x {deb.name} failed: {res.stderr.strip()[-500:]}")
        os.rename(unpacked, dest)


def fetch_kernel(flavor: str = "amd64", cache: Path | None = None) -> KernelPackage:
    """Return the unpacked Debian kernel of ``flavor``, fetching it on first use."""
    cache = cache or cache_root()
    try:
        package = resolve_kernel_package(flavor)
    except FetchError:
        cached = _newest_cached_kernel(flavor, cache)
        if cached is None:
            raise
        log.warning("apt cannot resolve linux-image-%s; using the cached %s", flavor, cached.package)
        return cached
    dest = cache / "kernels" / package
    if not dest.is_dir():
        with cache_lock(cache, package):
            if not dest.is_dir():  # Another process may have finished while we waited.
                try:
                    _unpack_package(package, dest, cache)
                except FetchError:
                    # The download refreshed stale lists; the meta package may now name a newer ABI.
                    if resolve_kernel_package(flavor) == package:
                        raise
                    return fetch_kernel(flavor, cache)
    return _kernel_from_dir(flavor, package, dest)


def _newest_cached_kernel(flavor: str, cache: Path) -> KernelPackage | None:
    pattern = re.compile(rf"^linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-{re.escape(flavor)}$")
    found = []
    for d in (cache / "kernels").glob(f"linux-image-*-{flavor}"):
        m = pattern.match(d.name)
        if m and d.is_dir():
            found.append((tuple(int(g) for g in m.groups()), d))
    if not found:
        return None
    _, newest = max(found)
    return _kernel_from_dir(flavor, newest.name, newest)


def is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF64 executable without a PT_INTERP (program interpreter)."""
    try:
        with open(path, "rb") as fh:
            ident = fh.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
                return False
            e_phoff, = struct.unpack_from("<Q", ident, 32)
            e_phentsize, e_phnum = struct.unpack_from("<HH", ident, 54)
            if e_phentsize < 56 or e_phnum > 512:
                return False
            fh.seek(e_phoff)
            table = fh.read(e_phentsize * e_phnum)
    except OSError:
        return False
    if len(table) < e_phentsize * e_phnum:
        return False
    return all(struct.unpack_from("<I", table, i * e_phentsize)[0] != 3  # PT_INTERP
               for i in range(e_phnum))


def fetch_busybox(cache: Path | None = None,
                  candidates: tuple[Path, ...] = (Path("/bin/busybox"), Path("/usr/bin/busybox"))) -> Path:
    """A statically linked busybox: the host's (busybox-static), else one fetched from apt."""
    for cand in candidates:
        if cand.exists() and is_static_elf(cand):
            return cand
    cache = cache or cache_root()
    dest = cache / "busybox-static"
    if not dest.is_dir():
        with cache_lock(cache, "busybox-static"):
            if not dest.is_dir():
                _unpack_package("busybox-static", dest, cache)
    path = dest / "bin" / "busybox"
    if not is_static_elf(path):
        raise FetchError(f"{path} from busybox-static is not a static ELF executable")
    return path


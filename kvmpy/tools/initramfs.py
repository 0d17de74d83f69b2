"""Building busybox initramfs images: kernel modules with their dependencies, and the archive.

Used by ``kvmpy initrd`` (:mod:`kvmpy.tools.initrd`) and by the nested test bed's L1
image. A :class:`ModuleTree` is a kernel's ``/lib/modules/<version>`` directory; it
finds modules by name (``kvm-amd`` and ``kvm_amd`` are the same module), knows the
built-in ones, and orders a set of modules after everything they depend on (from
modules.dep when the tree has one, else from each module's ``.modinfo depends=``, as
Debian ships no modules.dep). Modules are stored as plain ELF because busybox
``insmod`` does not decompress. Every input is read with a size bound.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kvmpy.tools.cpio import CpioArchive

MAX_FILE = 1 << 30
MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|gz|zst))?$")
BASE_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root")


class InitramfsError(Exception):
    """A missing or unreadable input, or a malformed module; the message is one line for the user."""


def module_key(name: str) -> str:
    """The one spelling of a module name: the kernel treats '-' and '_' alike."""
    return name.replace("-", "_")


def module_stem(filename: str) -> str:
    """``kvm-amd.ko.xz`` -> ``kvm-amd``."""
    return MODULE_SUFFIX.sub("", filename)


def read_input(path: Path, what: str) -> bytes:
    """The bytes of a regular input file, at most 1 GiB."""
    try:
        if path.stat().st_size > MAX_FILE:
            raise InitramfsError(f"{what} {path} is larger than 1 GiB")
        return path.read_bytes()
    except OSError as exc:
        raise InitramfsError(f"cannot read {what} {path}: {exc.strerror}") from None


def module_elf(path: Path) -> bytes:
    """A module (.ko, .ko.xz, .ko.gz or .ko.zst) as plain ELF."""
    data = read_input(path, "module")
    try:
        if path.name.endswith(".xz"):
            dec = lzma.LZMADecompressor()
            data = dec.decompress(data, max_length=MAX_FILE)
            if not dec.eof:
                raise ValueError("truncated, or larger than 1 GiB")
        elif path.name.endswith(".gz"):
            with gzip.open(path) as fh:
                data = fh.read(MAX_FILE + 1)
            if len(data) > MAX_FILE:
                raise ValueError("larger than 1 GiB")
        elif path.name.endswith(".zst"):
            import zstandard  # only zstd modules need it
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_FILE)
    except ImportError:
        raise InitramfsError(f"{path}: zstd modules need the python package 'zstandard'") from None
    except Exception as exc:  # every decompressor has its own error type
        raise InitramfsError(f"{path}: cannot decompress: {exc}") from None
    if data[:4] != b"\x7fELF":
        raise InitramfsError(f"{path} is not a kernel module (no ELF header)")
    return data


def module_depends(elf: bytes) -> list[str]:
    """The ``depends=`` list of a kernel module's .modinfo section (no modinfo tool needed)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise InitramfsError("kernel module is not an ELF64 little-endian object")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    if shentsize < 64 or shstrndx >= shnum or shoff + shentsize * shnum > len(elf):
        raise InitramfsError("kernel module has a malformed section header table")

    def section(i: int) -> tuple[int, int, int]:
        name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        if off + size > len(elf):
            raise InitramfsError("kernel module section lies outside the file")
        return name, off, size

    _, str_off, str_size = section(shstrndx)
    for i in range(shnum):
        name_off, off, size = section(i)
        end = elf.find(b"\0", str_off + name_off, str_off + str_size)
        if elf[str_off + name_off:end] != b".modinfo":
            continue
        for entry in elf[off:off + size].split(b"\0"):
            if entry.startswith(b"depends="):
                return [d for d in entry[len(b"depends="):].decode(errors="replace").split(",") if d]
        return []
    return []


@dataclass(frozen=True)
class Module:
    """A module picked from a tree: its name (``_`` spelling), file and plain ELF."""

    name: str
    path: Path
    elf: bytes


@dataclass
class ModuleTree:
    """A kernel's /lib/modules/<version> directory."""

    root: Path
    _by_name: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise InitramfsError(f"module directory {self.root} does not exist")
        for p in sorted(self.root.rglob("*.ko*")):
            if MODULE_SUFFIX.search(p.name):
                self._by_name.setdefault(module_key(module_stem(p.name)), p)
        self._dep = self._read_modules_dep()
        self._builtin = self._read_builtin()

    def _read_modules_dep(self) -> dict[str, list[str]] | None:
        path = self.root / "modules.dep"
        if not path.is_file():
            return None
        deps: dict[str, list[str]] = {}
        for line in read_input(path, "modules.dep").decode(errors="replace").splitlines():
            mod, sep, rest = line.partition(":")
            if sep:
                deps[module_key(module_stem(mod.rsplit("/", 1)[-1]))] = \
                    [module_key(module_stem(d.rsplit("/", 1)[-1])) for d in rest.split()]
        return deps

    def _read_builtin(self) -> set[str]:
        path = self.root / "modules.builtin"
        if not path.is_file():
            return set()
        text = read_input(path, "modules.builtin").decode(errors="replace")
        return {module_key(module_stem(r.rsplit("/", 1)[-1])) for r in text.split()}

    def path(self, name: str) -> Path:
        p = self._by_name.get(module_key(name))
        if p is None:
            raise InitramfsError(f"no module {name!r} in {self.root}")
        return p

    def is_builtin(self, name: str) -> bool:
        return module_key(name) in self._builtin and module_key(name) not in self._by_name

    def depends(self, name: str, elf: bytes) -> list[str]:
        if self._dep is not None and module_key(name) in self._dep:
            return self._dep[module_key(name)]
        try:
            return [module_key(d) for d in module_depends(elf)]
        except InitramfsError as exc:
            raise InitramfsError(f"module {name}: {exc}") from None

    def closure(self, names: list[str] | tuple[str, ...]) -> list[Module]:
        """The modules and all they depend on, each after its dependencies; built-ins are left out."""
        order: list[Module] = []
        done: set[str] = set()

        def visit(name: str, stack: tuple[str, ...]) -> None:
            n = module_key(name)
            if n in done or n in stack:
                return
            if self.is_builtin(n):
                done.add(n)
                return
            path = self.path(n)
            elf = module_elf(path)
            for d in self.depends(n, elf):
                visit(d, stack + (n,))
            done.add(n)
            order.append(Module(n, path, elf))

        for name in names:
            visit(name, ())
        return order


def busybox_archive(busybox: bytes, init: bytes, dirs: tuple[str, ...] = BASE_DIRS) -> CpioArchive:
    """An archive with ``dirs``, /dev/console and /dev/null, a static busybox as /bin/sh, and ``init``."""
    arc = CpioArchive()
    for d in dirs:
        arc.add_dir(d)
    arc.add_chardev("dev/console", 5, 1)  # the kernel opens it before /init runs
    arc.add_chardev("dev/null", 1, 3, perm=0o666)
    arc.add_file("bin/busybox", busybox, perm=0o755)
    arc.add_symlink("bin/sh", "busybox")
    arc.add_file("init", init, perm=0o755)
    return arc


def write_archive(arc: CpioArchive, output: Path, level: int = 6) -> None:
    """Write ``arc`` to ``output`` atomically: gzip'd (``level`` 1-9) or plain cpio (``level`` 0)."""
    raw = arc.to_bytes()
    data = raw if level == 0 else gzip.compress(raw, compresslevel=level, mtime=0)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, output)  # concurrent writers of the same archive write the same bytes
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise InitramfsError(f"cannot write {output}: {exc.strerror}") from None

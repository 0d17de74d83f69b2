"""The ``kvmpy initrd`` command: build a bootable busybox initramfs (gzip'd cpio newc).

The archive holds a static busybox (the host's busybox-static by default), an
``/init`` (kvmpy's default, which mounts /proc, /sys and /dev, loads the
packed modules and gives a shell on the console, or the user's own script),
optional extra files, and optional kernel modules taken from a kernel's module
tree together with everything they depend on (from modules.dep when the tree
has one, else from each module's .modinfo ``depends=``). Modules are stored
decompressed, in load order, and listed in /etc/kvmpy-modules.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import lzma
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kvmpy.testbed.cpio import CpioArchive
from kvmpy.testbed.fetch import FetchError, fetch_busybox, is_static_elf
from kvmpy.testbed.initramfs import module_depends

log = logging.getLogger(__name__)

MODULE_LIST = "etc/kvmpy-modules"
MAX_FILE = 1 << 30
_MOD_SUFFIX = re.compile(r"\.ko(\.(xz|gz|zst))?$")

DEFAULT_INIT = """#!/bin/sh
# kvmpy initrd default /init: a busybox system with a shell on the console.
/bin/busybox mkdir -p /proc /sys /dev /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
if [ -f /etc/kvmpy-modules ]; then
    while read -r m; do insmod "/$m" || echo "init: insmod $m failed"; done < /etc/kvmpy-modules
fi
echo "kvmpy initrd: $(uname -sr) up after $(cut -d' ' -f1 /proc/uptime) s; 'poweroff -f' ends the VM"
while true; do
    setsid cttyhack sh -l
    echo "init: the shell exited; 'poweroff -f' or 'reboot -f' to leave"
done
"""


class InitrdError(Exception):
    """A user mistake or an unreadable input; the message is the one line to print."""


@dataclass
class ModuleTree:
    """A kernel's /lib/modules/<version> directory."""

    root: Path
    _by_name: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise InitrdError(f"module directory {self.root} does not exist")
        for p in self.root.rglob("*.ko*"):
            if _MOD_SUFFIX.search(p.name):
                self._by_name.setdefault(_norm(_MOD_SUFFIX.sub("", p.name)), p)
        self._dep = self._read_modules_dep()
        self._builtin = self._read_builtin()

    def _read_modules_dep(self) -> dict[str, list[str]] | None:
        path = self.root / "modules.dep"
        if not path.is_file():
            return None
        deps: dict[str, list[str]] = {}
        for line in path.read_text(errors="replace").splitlines():
            mod, sep, rest = line.partition(":")
            if sep:
                deps[_norm(_MOD_SUFFIX.sub("", mod.rsplit("/", 1)[-1]))] = \
                    [_norm(_MOD_SUFFIX.sub("", d.rsplit("/", 1)[-1])) for d in rest.split()]
        return deps

    def _read_builtin(self) -> set[str]:
        path = self.root / "modules.builtin"
        if not path.is_file():
            return set()
        return {_norm(_MOD_SUFFIX.sub("", r.rsplit("/", 1)[-1])) for r in path.read_text().split()}

    def path(self, name: str) -> Path:
        p = self._by_name.get(_norm(name))
        if p is None:
            raise InitrdError(f"no module {name!r} in {self.root}")
        return p

    def is_builtin(self, name: str) -> bool:
        return _norm(name) in self._builtin and _norm(name) not in self._by_name

    def depends(self, name: str, elf: bytes) -> list[str]:
        if self._dep is not None and _norm(name) in self._dep:
            return self._dep[_norm(name)]
        try:
            return [_norm(d) for d in module_depends(elf)]
        except FetchError as exc:
            raise InitrdError(f"module {name}: {exc}") from None

    def closure(self, names: list[str]) -> list[tuple[str, Path, bytes]]:
        """The modules and all they depend on, each after its dependencies."""
        order: list[tuple[str, Path, bytes]] = []
        done: set[str] = set()

        def visit(name: str, stack: tuple[str, ...]) -> None:
            n = _norm(name)
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
            order.append((n, path, elf))

        for name in names:
            visit(name, ())
        return order


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_elf(path: Path) -> bytes:
    """A module as plain ELF (busybox insmod does not decompress)."""
    data = _read(path, "module")
    try:
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.name.endswith(".gz"):
            data = gzip.decompress(data)
        elif path.name.endswith(".zst"):
            import zstandard
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_FILE)
    except ImportError:
        raise InitrdError(f"{path}: zstd modules need the python package 'zstandard'") from None
    except Exception as exc:  # every decompressor has its own error type
        raise InitrdError(f"{path}: cannot decompress: {exc}") from None
    if data[:4] != b"\x7fELF":
        raise InitrdError(f"{path} is not a kernel module (no ELF header)")
    return data


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE:
            raise InitrdError(f"{what} {path} is larger than 1 GiB")
        return path.read_bytes()
    except OSError as exc:
        raise InitrdError(f"cannot read {what} {path}: {exc.strerror}") from None


def build(output: Path, busybox: Path | None = None, init: Path | None = None,
          modules_dir: Path | None = None, modules: list[str] | None = None,
          files: list[str] | None = None, level: int = 6) -> list[str]:
    """Write the initramfs; returns the archive's member names."""
    if busybox is None:
        try:
            busybox = fetch_busybox()
        except FetchError as exc:
            raise InitrdError(f"no static busybox: {exc} (install busybox-static or pass --busybox)") from None
    elif not is_static_elf(busybox):
        raise InitrdError(f"{busybox} is not a statically linked ELF executable (use busybox-static)")
    if modules and modules_dir is None:
        raise InitrdError("--module needs --modules-dir (a kernel's lib/modules/VERSION directory)")
    arc = CpioArchive()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "root"):
        arc.add_dir(d)
    arc.add_chardev("dev/console", 5, 1)
    arc.add_chardev("dev/null", 1, 3, perm=0o666)
    arc.add_file("bin/busybox", _read(busybox, "busybox"), perm=0o755)
    arc.add_symlink("bin/sh", "busybox")
    init_text = _read(init, "init script") if init else DEFAULT_INIT.encode()
    arc.add_file("init", init_text, perm=0o755)
    if modules:
        assert modules_dir is not None
        tree = ModuleTree(modules_dir)
        listed = []
        for name, path, elf in tree.closure(modules):
            rel = f"lib/modules/{modules_dir.name}/{_MOD_SUFFIX.sub('', path.name)}.ko"
            arc.add_file(rel, elf)
            listed.append(rel)
        arc.add_file(MODULE_LIST, ("\n".join(listed) + "\n").encode())
    for spec in files or []:
        src, sep, dest = spec.partition(":")
        src_path = Path(src)
        target = dest if sep else src_path.name
        try:
            arc.add_file(target, _read(src_path, "file"), perm=0o755 if src_path.stat().st_mode & 0o111 else 0o644)
        except ValueError as exc:
            raise InitrdError(f"--file {spec}: {exc}") from None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        if level == 0:
            tmp.write_bytes(arc.to_bytes())
        else:
            arc.write_gzip(tmp, level=level)
        tmp.replace(output)
    except OSError as exc:
        raise InitrdError(f"cannot write {output}: {exc.strerror}") from None
    return arc.names()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmpy initrd",
        description="Build a bootable initramfs (cpio newc, gzip) with a static busybox, an /init and "
                    "optionally kernel modules with their dependencies.",
        epilog="Example: kvmpy initrd -o initrd.gz && kvmpy -enable-kvm -m 512M -kernel "
               "/boot/vmlinuz -initrd initrd.gz -append console=ttyS0 -nographic")
    p.add_argument("-o", "--output", type=Path, required=True, help="the initramfs file to write")
    p.add_argument("--busybox", type=Path, help="static busybox binary (default: the host's busybox-static)")
    p.add_argument("--init", type=Path, help="script to use as /init (default: mount /proc,/sys,/dev, "
                                             "load modules, shell on the console)")
    p.add_argument("--modules-dir", type=Path, metavar="DIR",
                   help="a kernel's module tree, e.g. /lib/modules/$(uname -r)")
    p.add_argument("-m", "--module", action="append", default=[], metavar="NAME",
                   help="add module NAME and its dependencies (repeatable); /init loads them")
    p.add_argument("--file", action="append", default=[], metavar="SRC[:DEST]",
                   help="add a host file at DEST (default: its name) in the archive (repeatable)")
    p.add_argument("--level", type=int, default=6, choices=range(0, 10), metavar="0-9",
                   help="gzip level; 0 writes an uncompressed cpio (default 6)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        names = build(args.output, args.busybox, args.init, args.modules_dir, args.module, args.file, args.level)
    except InitrdError as exc:
        print(f"kvmpy initrd: error: {exc}", file=sys.stderr)
        return 2
    mods = sum(1 for n in names if n.endswith(".ko"))
    print(f"kvmpy initrd: wrote {args.output} ({args.output.stat().st_size} bytes, {len(names)} entries, "
          f"{mods} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

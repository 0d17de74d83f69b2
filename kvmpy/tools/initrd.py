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
import logging
import sys
from pathlib import Path
from typing import NoReturn

from kvmpy.tools.fetch import FetchError, fetch_busybox, is_static_elf
from kvmpy.tools.initramfs import (InitramfsError, ModuleTree, busybox_archive, module_stem, read_input,
                                   write_archive)

log = logging.getLogger(__name__)

MODULE_LIST = "etc/kvmpy-modules"

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


def build(output: Path, busybox: Path | None = None, init: Path | None = None,
          modules_dir: Path | None = None, modules: list[str] | None = None,
          files: list[str] | None = None, level: int = 6) -> list[str]:
    """Write the initramfs; returns the archive's member names. Raises InitramfsError."""
    if busybox is None:
        try:
            busybox = fetch_busybox()
        except FetchError as exc:
            raise InitramfsError(f"no static busybox: {exc} (install busybox-static or pass --busybox)") from None
    elif not is_static_elf(busybox):
        raise InitramfsError(f"{busybox} is not a statically linked ELF executable (use busybox-static)")
    if modules and modules_dir is None:
        raise InitramfsError("--module needs --modules-dir (a kernel's lib/modules/VERSION directory)")
    init_text = read_input(init, "init script") if init else DEFAULT_INIT.encode()
    arc = busybox_archive(read_input(busybox, "busybox"), init_text)
    if modules:
        assert modules_dir is not None
        listed = []
        for mod in ModuleTree(modules_dir).closure(modules):
            rel = f"lib/modules/{modules_dir.name}/{module_stem(mod.path.name)}.ko"
            arc.add_file(rel, mod.elf)
            listed.append(rel)
        arc.add_file(MODULE_LIST, ("\n".join(listed) + "\n").encode())
    for spec in files or []:
        src, sep, dest = spec.partition(":")
        src_path = Path(src)
        target = dest if sep else src_path.name
        data = read_input(src_path, "file")
        try:
            arc.add_file(target, data, perm=0o755 if src_path.stat().st_mode & 0o111 else 0o644)
        except ValueError as exc:
            raise InitramfsError(f"--file {spec}: {exc}") from None
    write_archive(arc, output, level)
    return arc.names()


PROG = "kvmpy initrd"


class UsageError(Exception):
    """A bad command line; the message is shown in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes raise instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(text: object) -> str:
    """``text`` as one printable line: control characters and undecodable bytes are escaped."""
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def command_parser(**kwargs: object) -> argparse.ArgumentParser:
    """An argparse parser (for a ``kvmpy`` tool subcommand) whose mistakes raise UsageError."""
    return _Parser(**kwargs)  # type: ignore[arg-type]


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """``parser``'s arguments, or the exit status: 0 after --help, 2 after ONE line on stderr for a mistake."""
    try:
        return parser.parse_args(argv)
    except UsageError as exc:
        print(f"{parser.prog}: error: {one_line(exc)} (see {parser.prog} --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help printed the help
        return exc.code if isinstance(exc.code, int) else 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
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
    """Run ``kvmpy initrd``; returns 0, or 2 after ONE line on stderr for any user mistake."""
    args = parse_command_line(_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        names = build(args.output, args.busybox, args.init, args.modules_dir, args.module, args.file, args.level)
        size = args.output.stat().st_size
    except (InitramfsError, OSError, ValueError) as exc:
        # OSError: a path the OS refuses (too long, a loop...); ValueError: a path with a NUL byte.
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    mods = sum(1 for n in names if n.endswith(".ko"))
    print(f"{PROG}: wrote {one_line(args.output)} ({size} bytes, {len(names)} entries, {mods} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CLI: run one command inside the nested complete-KVM test bed and exit with its status.

    python -m kvmpy.testbed [options] -- CMD [ARGS...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kvmpy.testbed.bed import BedError, NestedBed, project_root

BED_FAILURE_STATUS = 125  # like env(1) and git bisect: "could not run the command at all"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvmpy.testbed",
        description="Boot the nested L1 VM (QEMU TCG, kvm-amd: a complete /dev/kvm) and run CMD "
                    "in it, with the host's root (read-only) as its root with the kvmpy checkout, the "
                    "current directory and --share directories writable at their own paths. "
                    f"Exits with CMD's status, or {BED_FAILURE_STATUS} if the bed itself failed.",
        epilog="Environment: KVMPY_CACHE (kernel/initramfs cache, default ~/.cache/kvmpy), "
               "KVMPY_BED_QEMU (QEMU binary). Variables named KVMPY_* are passed into L1.")
    p.add_argument("--cwd", type=Path, default=None, help="directory to run CMD in (default: here)")
    p.add_argument("--share", type=Path, action="append", default=[], metavar="DIR",
                   help="also mount DIR writable in L1 at the same path (repeatable)")
    p.add_argument("--no-default-shares", action="store_true",
                   help="do not share the kvmpy checkout and the working directory")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set an environment variable for CMD (repeatable)")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds for the whole run (default 1200)")
    p.add_argument("--boot-timeout", type=float, default=300.0, help="seconds for L1 to boot (default 300)")
    p.add_argument("--stall-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up when L1 prints nothing for this long while CMD runs (default: never)")
    p.add_argument("--memory", type=int, default=4096, metavar="MIB", help="L1 RAM (default 4096)")
    p.add_argument("--smp", type=int, default=2, help="L1 vCPUs (default 2)")
    p.add_argument("--console", action="store_true", help="show the whole L1 console, not just CMD's output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or timing lines on stderr")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (usage: python -m kvmpy.testbed [options] -- CMD [ARGS...])")
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env wants NAME=VALUE, got {item!r}")
        env[name] = value
    if args.timeout <= 0 or args.boot_timeout <= 0 or args.memory < 256 or args.smp < 1 or \
            (args.stall_timeout is not None and args.stall_timeout <= 0):
        parser.error("--timeout/--boot-timeout/--stall-timeout must be positive, --memory >= 256, --smp >= 1")
    cwd = (args.cwd or Path.cwd()).resolve()
    if not cwd.is_dir():
        parser.error(f"--cwd {cwd} is not a directory")

    shares = list(args.share)
    root = project_root()
    if not args.no_default_shares:
        if root is not None:
            shares.append(root)
        if cwd != Path("/"):
            shares.append(cwd)
    if root is not None:  # so CMD can import this same kvmpy
        env.setdefault("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))

    logging.basicConfig(level=logging.WARNING, format="kvmpy-bed: %(message)s")

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        bed = NestedBed(shares, memory_mib=args.memory, smp=args.smp, boot_timeout=args.boot_timeout,
                        stall_timeout=args.stall_timeout,
                        on_line=out if args.console else None, on_output=None if args.console else out)
        if not args.quiet:
            print("kvmpy-bed: preparing the L1 kernel and initramfs", file=sys.stderr, flush=True)
        bed.prepare()
        if not args.quiet:
            print("kvmpy-bed: booting L1 (QEMU TCG, -cpu max)", file=sys.stderr, flush=True)
        res = bed.run(command, cwd=cwd, env=env, timeout=args.timeout)
    except BedError as exc:
        print(f"kvmpy-bed: error: {exc}", file=sys.stderr)
        return BED_FAILURE_STATUS
    except KeyboardInterrupt:
        print("kvmpy-bed: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        t = res.timings
        print(f"kvmpy-bed: exit {res.returncode}; boot {t.boot_s or 0:.1f} s, command "
              f"{t.command_s or 0:.1f} s, total {t.total_s:.1f} s", file=sys.stderr)
    return res.returncode if 0 <= res.returncode < 256 else 1


if __name__ == "__main__":
    sys.exit(main())

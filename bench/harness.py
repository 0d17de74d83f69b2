"""Shared plumbing of the kvmpy-vs-QEMU benchmarks: which VMMs run, where (here or in the bed), how figures print.

A benchmark script describes its guest and its figures; this module owns the rest:

- ``vmms()``: the command lines of the two VMMs under comparison (kvmpy, and QEMU when installed);
- ``keep_best()``: folding repeated runs into the best figure of each kind;
- ``run_in_bed()``: re-running the script inside the nested complete-KVM bed (``--inside-bed``);
- ``here_or_bed()``: the ``--here`` / bed dispatch of a guest benchmark built from host-side assets;
- ``Table``: the "figure / kvmpy / QEMU / kvmpy/QEMU" table every benchmark prints.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BED = "the nested bed (complete KVM)"
HERE = "this machine's KVM"


def vmms(qemu_flags: Iterable[str] = ()) -> dict[str, list[str]]:
    """{"kvmpy": argv, "QEMU": argv} with KVM enabled; QEMU only if ``qemu-system-x86_64`` is on PATH."""
    runners = {"kvmpy": [sys.executable, "-m", "kvmpy", "-enable-kvm"]}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        runners["QEMU"] = [qemu, "-enable-kvm", *qemu_flags]
    return runners


def keep_best(best: dict[str, float], got: Mapping[str, float]) -> None:
    """Raise each figure of ``best`` to the one in ``got`` where that is higher (higher is better)."""
    for k, v in got.items():
        best[k] = max(best.get(k, v), v)


def run_in_bed(script: str | Path, argv: Iterable[str]) -> int:
    """Run ``script --inside-bed ARGV`` in the nested bed with this worktree on PYTHONPATH; its exit status."""
    cmd = [sys.executable, "-m", "kvmpy.testbed", "--quiet", "--", sys.executable, str(Path(script).resolve()),
           "--inside-bed", *argv]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO))).returncode


def here_or_bed(parser: argparse.ArgumentParser, script: str | Path,
                build_assets: Callable[[], tuple[Path, Path]], assets_in_bed: Callable[[], tuple[Path, Path]],
                measure: Callable[[argparse.Namespace, Path, Path, str], None],
                argv: list[str] | None = None) -> int:
    """The main() of a guest benchmark: ``--here`` measures on this machine, otherwise in the bed.

    ``build_assets`` builds (kernel, initrd) on the host, where the compiler and a writable cache
    are; inside the bed ``assets_in_bed`` names the same files (L1 sees the cache read-only).
    ``measure(args, kernel, initrd, where)`` runs and prints. The script's own options are
    forwarded unchanged into the bed.
    """
    parser.add_argument("--here", action="store_true", help="run on this machine's /dev/kvm (a complete KVM)")
    parser.add_argument("--inside-bed", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.here or args.inside_bed:
        kernel, initrd = build_assets() if args.here else assets_in_bed()
        measure(args, kernel, initrd, BED if args.inside_bed else HERE)
        return 0
    build_assets()
    return run_in_bed(script, argv)


@dataclass(frozen=True)
class Table:
    """The comparison table: one row per figure, kvmpy's value, QEMU's and their ratio (``unit`` after it)."""

    label: str = "figure"
    label_width: int = 16
    width: int = 12
    precision: int = 1
    ours: str = "kvmpy"
    theirs: str = "QEMU"
    unit: str = ""

    def header(self) -> None:
        print(f"{self.label:{self.label_width}} {self.ours:>{self.width}} {self.theirs:>{self.width}} "
              f"{'kvmpy/QEMU':>11}", flush=True)

    def row(self, label: str, ours: float | None, theirs: float | None, missing: str = "(no qemu)") -> None:
        """One figure; a value of None is shown as ``missing`` for QEMU (it did not run) and as
        ``(noisy)`` for kvmpy (it could not be measured), and then no ratio is given."""
        tail = f"  ({self.unit})" if self.unit else ""
        if ours is None or theirs is None:
            mine = self._fmt(ours) if ours is not None else f"{'(noisy)':>{self.width}}"
            cells = f"{mine} {self._fmt(theirs) if theirs is not None else f'{missing:>{self.width}}'}"
        else:
            ratio = f"{ours / theirs:10.2f}x" if theirs else f"{'-':>11}"
            cells = f"{self._fmt(ours)} {self._fmt(theirs)} {ratio}"
        print(f"{label:{self.label_width}} {cells}{tail}", flush=True)

    def _fmt(self, value: float) -> str:
        return f"{value:{self.width}.{self.precision}f}"

"""`kvmpy-img io`: a qemu-io-like exerciser (read/write with -P patterns, discard, map, flush),
driven by -c commands or by a script on stdin."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable

from kvmpy.block.backend import BlockBackend
from kvmpy.block.errors import BlockError
from kvmpy.block.img_ops import map_extents
from kvmpy.block.sizes import human_size, parse_size

HELP = """commands:
  read [-P pattern] [-v] offset length     read and optionally verify a byte pattern
  write [-P pattern] [-z] offset length    write a byte pattern (default 0xcd) or zeroes
  discard offset length                    discard a range
  map                                      show allocated ranges
  flush                                    flush to disk
  help                                     this text"""


class IoError(BlockError):
    """A failed exerciser command (bad arguments or pattern mismatch)."""


def _num(text: str) -> int:
    try:
        return parse_size(text)
    except BlockError:
        raise IoError(f"invalid numeric argument '{text}'") from None


def _pattern(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise IoError(f"invalid pattern '{text}'") from None
    if not 0 <= v <= 255:
        raise IoError(f"pattern {text} is not a byte")
    return v


def _timing(n: int, t: float) -> str:
    t = max(t, 1e-9)
    return (f"{human_size(n)}, 1 ops; {int(t) // 60:02d}:{t % 60:05.2f} "
            f"({human_size(int(n / t))}/sec and {1 / t:.4f} ops/sec)")


class Exerciser:
    """Runs exerciser commands against one open image, writing output through ``out``."""

    def __init__(self, img: BlockBackend, out: Callable[[str], None]) -> None:
        self.img = img
        self.out = out

    def run(self, line: str) -> bool:
        """Run one command; False when it failed."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            self.out(f"io: {e}")
            return False
        if not words:
            return True
        cmd, args = words[0], words[1:]
        fn = getattr(self, f"cmd_{cmd}", None)
        if fn is None:
            self.out(f"command \"{cmd}\" not found")
            return False
        try:
            return fn(args) is not False
        except BlockError as e:
            self.out(f"{cmd} failed: {e}")
            return False

    def _range(self, args: list[str]) -> tuple[int, int]:
        if len(args) != 2:
            raise IoError("expected an offset and a length")
        off, n = _num(args[0]), _num(args[1])
        if off + n > self.img.size():
            raise IoError(f"offset {off} + length {n} is past the end of the image")
        return off, n

    def _opts(self, args: list[str], flags: str, valued: str) -> tuple[dict[str, str], list[str]]:
        opts: dict[str, str] = {}
        rest: list[str] = []
        it = iter(args)
        for a in it:
            if a.startswith("-") and len(a) == 2 and a[1] in flags + valued:
                opts[a[1]] = next(it, "") if a[1] in valued else "1"
                if a[1] in valued and opts[a[1]] == "":
                    raise IoError(f"option {a} needs a value")
            else:
                rest.append(a)
        return opts, rest

    def cmd_read(self, args: list[str]) -> bool:
        opts, rest = self._opts(args, "vq", "P")
        off, n = self._range(rest)
        t = time.perf_counter()
        data = self.img.read(off, n)
        t = time.perf_counter() - t
        ok = True
        if "P" in opts:
            want = bytes([_pattern(opts["P"])]) * n
            if data != want:
                bad = next(i for i in range(n) if data[i] != want[i])
                self.out(f"Pattern verification failed at offset {off + bad}, {n} bytes")
                ok = False
        if "v" in opts:
            for i in range(0, n, 16):
                self.out(f"{off + i:08x}:  " + " ".join(f"{b:02x}" for b in data[i:i + 16]))
        if "q" not in opts:
            self.out(f"read {n}/{n} bytes at offset {off}")
            self.out(_timing(n, t))
        return ok

    def cmd_write(self, args: list[str]) -> bool:
        opts, rest = self._opts(args, "zuq", "P")
        off, n = self._range(rest)
        t = time.perf_counter()
        if "z" in opts:
            self.img.write_zeroes(off, n, unmap="u" in opts)
        else:
            self.img.write(off, bytes([_pattern(opts.get("P", "0xcd"))]) * n)
        t = time.perf_counter() - t
        if "q" not in opts:
            self.out(f"wrote {n}/{n} bytes at offset {off}")
            self.out(_timing(n, t))
        return True

    def cmd_discard(self, args: list[str]) -> bool:
        opts, rest = self._opts(args, "q", "")
        off, n = self._range(rest)
        t = time.perf_counter()
        self.img.discard(off, n)
        if "q" not in opts:
            self.out(f"discard {n}/{n} bytes at offset {off}")
            self.out(_timing(n, time.perf_counter() - t))
        return True

    def cmd_map(self, args: list[str]) -> bool:
        for e in map_extents(self.img):
            alloc = e.present and e.depth == 0
            self.out(f"{human_size(e.length)} ({e.length:#x}) bytes {'' if alloc else 'not '}"
                     f"allocated at offset {human_size(e.start)} ({e.start:#x})")
        return True

    def cmd_flush(self, args: list[str]) -> bool:
        self.img.flush()
        return True

    def cmd_help(self, args: list[str]) -> bool:
        self.out(HELP)
        return True


READ_ONLY_COMMANDS = frozenset({"read", "map", "flush", "help"})


def only_reads(commands: Iterable[str]) -> bool:
    """True when no command could change the image (so it can be opened read-only)."""
    for c in commands:
        try:
            words = shlex.split(c, comments=True)
        except ValueError:
            continue  # reported when run
        if words and words[0] not in READ_ONLY_COMMANDS:
            return False
    return True


def run_commands(img: BlockBackend, commands: Iterable[str], out: Callable[[str], None]) -> bool:
    ex = Exerciser(img, out)
    ok = True
    for c in commands:
        ok = ex.run(c) and ok
    return ok

"""Crash-test writer (run as a child process by test_crash.py, then SIGKILLed at a random moment).

Applies a deterministic stream of writes, zero writes and discards to an image; after every
``FLUSH_EVERY`` operations it flushes the image and appends the number of acknowledged operations
to a journal, so the parent knows which data must survive.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from kvmpy.block.image import open_image

FLUSH_EVERY = 8


def ops(seed: int, size: int, cs: int):  # type: ignore[no-untyped-def]
    """The operation stream: (kind, offset, length, fill byte)."""
    rnd = random.Random(seed)
    while True:
        off = rnd.randrange(size)
        n = min(size - off, rnd.choice([512, cs // 2, cs, 3 * cs, rnd.randrange(1, 5 * cs)]))
        kind = rnd.choices(["write", "zero", "discard"], [8, 1, 1])[0]
        yield kind, off, n, rnd.randrange(1, 256)


def main() -> None:
    path, journal, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    img = open_image(path, readonly=False)
    cs = img.cluster_size() or 4096
    size = img.size()
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    done = 0
    for kind, off, n, fill in ops(seed, size, cs):
        if kind == "write":
            img.write(off, bytes([fill]) * n)
        elif kind == "zero":
            img.write_zeroes(off, n)
        else:
            img.discard(off, n)
        done += 1
        if done % FLUSH_EVERY == 0:
            img.flush()
            os.write(fd, f"{done}\n".encode())
            os.fsync(fd)


if __name__ == "__main__":
    main()

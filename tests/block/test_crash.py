"""Crash consistency: SIGKILL a writer at random moments, many times over the same image.

After every kill qemu-img check must find no corruption (leaked clusters are allowed) and every
byte acknowledged by a flush must read back unchanged.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmpy.block.image import open_image
from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2
from tests.block.conftest import needs_qemu_img, qemu_check, qemu_img, qemu_raw
from tests.block.crash_writer import FLUSH_EVERY, ops

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def _apply(model: bytearray, kind: str, off: int, n: int, fill: int, unknown: bytearray) -> None:
    if kind == "write":
        model[off:off + n] = bytes([fill]) * n
    elif kind == "zero":
        model[off:off + n] = bytes(n)
    else:  # discarded bytes are unspecified from now on
        unknown[off:off + n] = b"\1" * n


def _run(tmp_path: Path, image: Path, kills: int, seed: int) -> None:
    rnd = random.Random(seed)
    with open_image(image) as img:
        size = img.size()
        cs = img.cluster_size() or 4096  # the writer derives its op sizes from this too
        model = bytearray(img.read(0, size))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    leaks_seen = 0
    for k in range(kills):
        journal = tmp_path / f"journal{k}"
        wseed = rnd.randrange(1 << 30)
        child = subprocess.Popen([sys.executable, "-m", "tests.block.crash_writer", str(image),
                                  str(journal), str(wseed)], cwd=ROOT, env=env)
        # let it start (imports take a while) and then kill it somewhere in the middle of work
        deadline = time.monotonic() + 20
        while not (journal.exists() and journal.stat().st_size) and time.monotonic() < deadline:
            if child.poll() is not None:
                pytest.fail(f"writer exited early with {child.returncode}")
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        res = qemu_check(image)
        assert res.get("corruptions", 0) == 0 and res["check-errors"] == 0, (k, res)
        leaks_seen += res.get("leaks", 0)
        acked = int(journal.read_text().split()[-1]) if journal.read_text().strip() else 0
        unknown = bytearray(size)
        stream = ops(wseed, size, cs)
        for _ in range(acked):
            _apply(model, *next(stream), unknown)
        for _ in range(FLUSH_EVERY):  # the ops that may or may not have landed
            kind, off, n, _fill = next(stream)
            unknown[off:off + n] = b"\1" * n
        actual = qemu_raw(image, tmp_path)
        for i in range(0, size, 4096):  # compare page by page, skipping uncertain bytes
            if actual[i:i + 4096] != model[i:i + 4096]:
                for j in range(i, min(size, i + 4096)):
                    assert unknown[j] or actual[j] == model[j], \
                        f"kill {k}: acknowledged byte {j} is {actual[j]}, expected {model[j]}"
        model[:] = actual
    print(f"{kills} kills, {leaks_seen} leaked clusters seen")


@needs_qemu_img
@pytest.mark.parametrize("variant", ["plain", "backing+snapshot"])
def test_sigkill_during_writes(tmp_path: Path, variant: str) -> None:
    image = tmp_path / "crash.qcow2"
    size = 4 * MiB
    if variant == "plain":
        create_qcow2(image, Qcow2Options(size=size, cluster_size=4096))
    else:
        base = tmp_path / "base.raw"
        base.write_bytes(bytes(range(256)) * (size // 256))
        create_qcow2(image, Qcow2Options(size=size, cluster_size=4096, backing_file=base.name,
                                         backing_format="raw"))
        qemu_img("snapshot", "-c", "before", image)
    _run(tmp_path, image, kills=int(os.environ.get("KVMPY_CRASH_KILLS", "8")), seed=len(variant))


@needs_qemu_img
@pytest.mark.slow
def test_sigkill_many_times(tmp_path: Path) -> None:
    image = tmp_path / "crash.qcow2"
    create_qcow2(image, Qcow2Options(size=8 * MiB, cluster_size=512))
    _run(tmp_path, image, kills=int(os.environ.get("KVMPY_CRASH_KILLS_SLOW", "100")), seed=99)

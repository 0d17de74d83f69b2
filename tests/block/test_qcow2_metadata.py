"""Qcow2Metadata.classify: the one-by-one path for a few L2 entries answers as the whole-array path does."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from kvmpy.block import qcow2_format as fmt
from kvmpy.block import qcow2_metadata as qm
from kvmpy.block.errors import CorruptImageError
from tests.block.conftest import needs_qemu_img, qemu_img


def _entry(rnd: random.Random, cs: int) -> int:
    off = rnd.randrange(0, 1 << 40) & ~(cs - 1)
    return rnd.choice([
        0,                                                  # unallocated
        fmt.QCOW_OFLAG_ZERO,                                # zero, no cluster
        fmt.QCOW_OFLAG_ZERO | fmt.QCOW_OFLAG_COPIED | off,  # zero, allocated
        off, fmt.QCOW_OFLAG_COPIED | off,                   # normal
        fmt.QCOW_OFLAG_COMPRESSED | rnd.getrandbits(62),    # compressed
        off | (1 << rnd.choice([1, 8, 56, 61])),            # reserved bit: corrupt
        off | rnd.randrange(512, cs, 512),                  # unaligned: corrupt
    ])


@needs_qemu_img
def test_few_entries_classify_as_the_array_path_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", path, "64M")
    fd = os.open(path, os.O_RDONLY)
    try:
        meta = qm.Qcow2Metadata(fd, path, readonly=True)
        rnd = random.Random(14)
        for _ in range(2000):
            entries = np.array([_entry(rnd, meta.cs) for _ in range(rnd.randrange(1, qm.SCALAR_CLASSIFY + 1))],
                               dtype=np.uint64)
            answers = []
            for limit in (qm.SCALAR_CLASSIFY, 0):  # the few-entries path, then the numpy one
                monkeypatch.setattr(qm, "SCALAR_CLASSIFY", limit)
                try:
                    kinds, offs = meta.classify(entries)
                    answers.append((kinds.dtype, kinds.tolist(), offs.dtype, offs.tolist()))
                except CorruptImageError as exc:
                    answers.append(str(exc))
            monkeypatch.undo()
            assert answers[0] == answers[1], entries
    finally:
        os.close(fd)

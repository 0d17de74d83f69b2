#!/usr/bin/env python3
"""virtio-blk device-side requests/s on the host, no VM: the device's per-request Python cost alone.

A Linux-like driver (tests/devices/virtio/driver.py) lays requests out in real
guest memory, as the guest's virtio_blk does (one INDIRECT descriptor naming a
table of header, data pages and status byte), over a raw image in a temporary
directory on tmpfs (as the bed's image on L1's tmpfs, cache=writeback). Three shapes:

  rand-read-4k   one 4 KiB read per kick (the guest's one request in flight)
  seq-read-1m    one 1 MiB read of 256 scattered 4 KiB pages per kick
  seq-write-1m   one 1 MiB write of 256 scattered 4 KiB pages per kick

Each runs ``--secs`` seconds of device time; requests/s and MB/s are printed
for the fastest run of 32 requests, counting only the CPU time (user and
system) of the device's ``queue_notify``:
the driver's Python work of laying out and reaping a request is the guest's in
a VM, and CPU time is steadier than wall time on a shared machine.

Usage:  python bench/virtio_blk_queue.py [--secs 2]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmpy.block.drive import open_drive  # noqa: E402
from kvmpy.devices.virtio.blk import T_IN, T_OUT, VirtioBlk  # noqa: E402
from kvmpy.devices.virtio.device import VirtioContext  # noqa: E402
from kvmpy.devices.virtio.queue import SplitQueue  # noqa: E402
from tests.devices.virtio.driver import DriverQueue, guest_memory  # noqa: E402

MiB = 1 << 20
RAM = 64 * MiB
RING, HDR, STATUS, TABLE, DATA = 0x1000, 0x20000, 0x21000, 0x22000, 4 * MiB
DISK = 256 * MiB
BATCH = 32


def run(shape: str, secs: float) -> tuple[float, float]:
    """(requests/s, MB/s) of ``shape`` for ``secs`` seconds."""
    mem, _ram = guest_memory(RAM)
    mem.fill(0, RAM)  # fault guest RAM in, as a running guest has
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="vblk-queue-", dir=shm if shm.is_dir() else None) as tmp:
        image = Path(tmp) / "disk.raw"
        with open(image, "wb") as f:
            f.write(b"\x5a" * DISK)  # allocated, so reads come from the page cache
        drive = open_drive(image, "raw", id="d0")
        dev = VirtioBlk(drive, mem)
        drv = DriverQueue(mem, RING, 256, event_idx=True)
        q = drv.attach(SplitQueue(mem, 256), indirect=True)
        irqs: list[int] = []
        dev.activate(VirtioContext(features=dev.device_features(), queues=[q], interrupt=irqs.append,
                                   config_changed=lambda: None, needs_reset=print))
        pages = 1 if shape == "rand-read-4k" else 256
        rtype = T_OUT if shape == "seq-write-1m" else T_IN
        rng = random.Random(1)
        frames = rng.sample(range(DATA // 4096, RAM // 4096), pages)  # scattered guest pages, as O_DIRECT's
        data = [(f * 4096, 4096) for f in frames]
        nbytes = 4096 * pages
        n = 0
        sector = 0
        busy = 0.0
        batch, best = 0.0, float("inf")  # the fastest run of BATCH requests: steadier on a shared machine
        while busy < secs:
            if shape == "rand-read-4k":
                sector = rng.randrange(DISK // 4096) * 8
            else:
                sector = (sector + nbytes // 512) % (DISK // 512)
            mem.write(HDR, struct.pack("<IIQ", rtype, 0, sector))
            out, in_ = ([(HDR, 16)] + data, [(STATUS, 1)]) if rtype == T_OUT else ([(HDR, 16)], data + [(STATUS, 1)])
            drv.add(out, in_, indirect_at=TABLE)
            t0 = time.thread_time()
            dev.queue_notify(0)
            took = time.thread_time() - t0
            busy += took
            batch += took
            drv.get_used()
            n += 1
            if n % BATCH == 0:
                best, batch = min(best, batch), 0.0
        if mem.read(STATUS, 1) != b"\0":
            raise RuntimeError(f"{shape}: request failed (status {mem.read(STATUS, 1)!r})")
        drive.close()
    return BATCH / best, BATCH * nbytes / best / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", type=float, default=2.0, help="seconds per shape")
    args = ap.parse_args()
    print(f"{'shape':14} {'requests/s':>11} {'MB/s':>9}")
    for shape in ("rand-read-4k", "seq-read-1m", "seq-write-1m"):
        rps, mbs = run(shape, args.secs)
        print(f"{shape:14} {rps:11.0f} {mbs:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

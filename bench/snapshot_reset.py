"""Snapshot-reset benchmark: how many times a second a running VM can be put back to a snapshot.

    python bench/snapshot_reset.py [--seconds 3] [--run-ms 1]

The dirtier guest rewrites the first byte of 256 pages (its smallest region,
1 MiB) over and over; between resets it runs ``--run-ms``; each reset rewrites only the pages dirtied since the snapshot (KVM's
dirty log plus VMM writes) and restores vCPU, irqchip, PIT and device state,
as a fuzzing harness would. Prints resets/s and the time per reset.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvmpy.config import DebugExitConfig, MachineConfig  # noqa: E402
from kvmpy.devices.chardev import BufferBackend  # noqa: E402
from kvmpy.machine import Machine  # noqa: E402
from kvmpy.migration.snapshot import Snapshot  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--run-ms", type=float, default=1.0, help="guest run time between resets (default 1 ms)")
    a = p.parse_args()
    # The dirtier works in whole MiB: one MiB is 256 pages; the pages really rewritten are counted.
    cfg = MachineConfig(kernel=build_guest("dirtier"), memory=256 << 20, append="start_mb=4 size_mb=1",
                        no_reboot=True, serial="null", debug_exit=DebugExitConfig(0xF4, 4)).validate()
    m = Machine(cfg, console=BufferBackend())
    try:
        m.start()
        time.sleep(0.5)
        snap = Snapshot.take(m)
        times, pages = [], []
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            time.sleep(a.run_ms / 1000)
            t0 = time.perf_counter()
            pages.append(snap.reset())
            times.append(time.perf_counter() - t0)
        times.sort()
        mean = sum(times) / len(times)
        print(f"{len(times)} resets; pages rewritten per reset: median {sorted(pages)[len(pages) // 2]}")
        print(f"reset time: median {times[len(times) // 2] * 1e6:.0f} us, mean {mean * 1e6:.0f} us, "
              f"p99 {times[int(len(times) * 0.99)] * 1e6:.0f} us -> {1 / mean:.0f} resets/s "
              f"(goal: under 1000 us)")
    finally:
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

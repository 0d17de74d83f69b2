"""Live-migration benchmark: the dirtier guest migrated by kvmpy and by qemu-system-x86_64, same KVM, same limits.

    python bench/migration.py [--memory 1024] [--dirty-mb 64] [--max-bandwidth 1G] [--downtime-limit 300]
    python bench/migration.py --checksum [--checksum-mib 512]

Each hypervisor runs a source and an ``-incoming tcp:127.0.0.1:PORT``
destination; the migration is driven over QMP with the same parameters and
the figures are QMP's own query-migrate (total-time, downtime, transferred).
Prints both rows and the kvmpy/QEMU ratios (below 1 is better for kvmpy).

``--checksum`` measures what the stream checksum costs, without a VM: RAM
full of random pages goes through the real sender (StreamWriter into a
discarding channel) and the real reader (StreamReader from memory into a
second RAM block); the checksum alone (XXH3-64, stream version 3) and the
scheme it replaced (CRC-32 of per-page word sums, version 2) are timed over
the same bytes, and each is shown as a share of the send and receive time.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvmpy.config import parse_size  # noqa: E402
from kvmpy.migration.migrate_cli import QmpClient  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402


def _common(kernel: Path, memory: int, dirty_mb: int, out: Path, qmp: Path) -> list[str]:
    return ["-m", str(memory), "-display", "none", "-nodefaults", "-serial", f"file:{out}",
            "-kernel", str(kernel), "-append", f"start_mb=4 size_mb={dirty_mb}",
            "-qmp", f"unix:{qmp},server,wait=off"]


def _launch(which: str, args: list[str]) -> subprocess.Popen:
    if which == "qemu":
        cmd = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-enable-kvm", *args]
    else:
        cmd = [sys.executable, "-m", "kvmpy", "-enable-kvm", *args]
    return subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _wait(pred, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def run_one(which: str, kernel: Path, a: argparse.Namespace, port: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"migbench-{which}-"))
    src_q, dst_q = tmp / "src.qmp", tmp / "dst.qmp"
    procs = [_launch(which, _common(kernel, a.memory, a.dirty_mb, tmp / "src.out", src_q)),
             _launch(which, _common(kernel, a.memory, a.dirty_mb, tmp / "dst.out", dst_q)
                     + ["-incoming", f"tcp:127.0.0.1:{port}"])]
    try:
        _wait(lambda: (tmp / "src.out").exists() and (tmp / "src.out").stat().st_size > 40, 60,
              f"{which} source guest did not start")
        _wait(lambda: dst_q.exists(), 60, f"{which} destination did not start")
        time.sleep(1.0)  # let the guest dirty its region for a while
        src = QmpClient(f"unix:{src_q}")
        src.execute("migrate-set-parameters", **{"downtime-limit": a.downtime_limit,
                                                 "max-bandwidth": a.max_bandwidth})
        src.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        while True:
            info = src.execute("query-migrate")
            if info["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        dst = QmpClient(f"unix:{dst_q}")
        _wait(lambda: dst.execute("query-status")["status"] == "running", 30, f"{which} destination not running")
        size = (tmp / "dst.out").stat().st_size
        _wait(lambda: (tmp / "dst.out").stat().st_size > size, 30, f"{which} destination guest not progressing")
        for c in (src, dst):
            try:
                c.execute("quit")
            except Exception:
                pass
        if info["status"] != "completed":
            raise RuntimeError(f"{which}: migration {info['status']}: {info.get('error-desc')}")
        return {"total": info["total-time"], "downtime": info["downtime"],
                "bytes": info["ram"]["transferred"], "rounds": info["ram"]["dirty-sync-count"]}
    finally:
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


class _Discard:
    """A channel that drops what it is given: the sender's own cost, not a link's."""

    duplex = False

    def write(self, data: object) -> None:
        pass


def _best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def checksum_cost(mib: int) -> int:
    import zlib

    import numpy as np
    import xxhash

    from kvmpy.memory.ramblock import PAGE_SIZE, RAMBlock
    from kvmpy.migration import stream
    from kvmpy.migration.ram import RamCounters, RamReceiver, RamSender
    from kvmpy.migration.transport import FileChannel

    src, dst = RAMBlock.allocate("src", mib << 20), RAMBlock.allocate("dst", mib << 20)
    src.array[:] = np.random.default_rng(1).integers(0, 256, src.size, dtype=np.uint8)
    sink = io.BytesIO()

    def send(channel: object) -> None:
        writer = stream.StreamWriter(channel)  # type: ignore[arg-type]
        writer.header({})
        sender = RamSender([src], writer, RamCounters())
        sender.stable = True  # as at switchover: straight from RAM, no copy
        sender.send_all(0)
        writer.end()

    send(FileChannel(sink, what="memory"))  # type: ignore[arg-type]
    data = sink.getvalue()

    def receive() -> None:
        reader = stream.StreamReader(FileChannel(io.BytesIO(data), what="memory"))  # type: ignore[arg-type]
        reader.header()
        reader.block_pages, reader.block_views = [dst.npages], [dst.mv]
        ram = RamReceiver([dst])
        while (rec := reader.next())[0] != stream.T_END:
            if rec[0] == stream.T_RUN:
                ram.applied_run(rec[1])

    def new_sum() -> None:
        h = xxhash.xxh3_64()
        h.update(src.array)
        h.intdigest()

    def old_sum() -> None:
        zlib.crc32(src.array.view("<u8").reshape(-1, PAGE_SIZE // 8).sum(axis=1, dtype="<u8"))

    t_send, t_recv = _best(lambda: send(_Discard())), _best(receive)
    t_new, t_old = _best(new_sum), _best(old_sum)
    assert np.array_equal(src.array, dst.array)
    rate = lambda t: f"{mib / 1024 / t:6.2f} GiB/s"  # noqa: E731
    print(f"stream of {mib} MiB of random pages (stream version {stream.VERSION}), best of 5:")
    print(f"  send (scan, hash, frame)   {t_send * 1e3:8.1f} ms  {rate(t_send)}")
    print(f"  receive (read, hash, place){t_recv * 1e3:8.1f} ms  {rate(t_recv)}")
    print(f"  XXH3-64 alone (v3)         {t_new * 1e3:8.1f} ms  {rate(t_new)}  "
          f"= {100 * t_new / t_send:.0f}% of send, {100 * t_new / t_recv:.0f}% of receive")
    print(f"  CRC-32 of page sums (v2)   {t_old * 1e3:8.1f} ms  {rate(t_old)}  "
          f"= {100 * t_old / t_send:.0f}% of send, {100 * t_old / t_recv:.0f}% of receive")
    print(f"  ratio XXH3-64 / page sums: {t_new / t_old:.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    p.add_argument("--dirty-mb", type=int, default=64, help="MiB the guest keeps dirtying (default 64)")
    p.add_argument("--max-bandwidth", default="1G", help="bytes/s for both (default 1G)")
    p.add_argument("--downtime-limit", type=int, default=300, help="ms for both (default 300)")
    p.add_argument("--runs", type=int, default=1, help="runs of each, interleaved; medians are shown")
    p.add_argument("--checksum", action="store_true", help="only measure the stream checksum's cost (no VM)")
    p.add_argument("--checksum-mib", type=int, default=512, help="MiB of pages for --checksum (default 512)")
    a = p.parse_args()
    if a.checksum:
        return checksum_cost(a.checksum_mib)
    a.max_bandwidth = parse_size(a.max_bandwidth, "--max-bandwidth", default_unit=1)
    if shutil.which("qemu-system-x86_64") is None:
        print("bench/migration.py: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
              file=sys.stderr)
        return 1
    kernel = build_guest("dirtier")
    print(f"dirtier guest, {a.memory} MiB RAM, {a.dirty_mb} MiB dirtied continuously, "
          f"max-bandwidth {a.max_bandwidth >> 20} MiB/s, downtime-limit {a.downtime_limit} ms")
    # Interleaved, so that load from other work on the machine falls on both alike.
    results: dict[str, list[dict]] = {"qemu": [], "kvmpy": []}
    for i in range(a.runs):
        for which in results:
            port = 46000 + os.getpid() % 1000 + i + (0 if which == "qemu" else 100)
            results[which].append(run_one(which, kernel, a, port))
    rows = {}
    for which, runs in results.items():
        rows[which] = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
        r = rows[which]
        print(f"{which:6} total {r['total']:6d} ms  downtime {r['downtime']:5d} ms  "
              f"sent {r['bytes'] / (1 << 20):8.1f} MiB  rounds {r['rounds']}"
              + (f"  (median of {a.runs}; best total {min(x['total'] for x in runs)} ms, "
                 f"best downtime {min(x['downtime'] for x in runs)} ms)" if a.runs > 1 else ""))
    q, k = rows["qemu"], rows["kvmpy"]
    print(f"ratio kvmpy/qemu: total-time {k['total'] / max(q['total'], 1):.2f}  "
          f"downtime {k['downtime'] / max(q['downtime'], 1):.2f}  bytes {k['bytes'] / max(q['bytes'], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: kvmpy-img convert against qemu-img convert, raw->qcow2 and qcow2->raw.

The source is mixed data (random, zero and repeated-pattern extents). Both tools run in the
same process tree, on the same files, back to back; MB/s and the kvmpy/qemu ratio are printed.

Both tools are measured the same way: a whole command, start-up included, best of N interleaved
runs, each started after os.sync() so neither inherits the other's dirty page cache. kvmpy runs
byte-compiled, as an installed package does: PYTHONDONTWRITEBYTECODE (set in some CI shells)
would otherwise make every run re-compile kvmpy's source, which no installed kvmpy-img does.
The .pyc files go to a scratch PYTHONPYCACHEPREFIX, so the source tree is left alone. Each
tool's start-up (best run of a 1 MiB convert) is printed too, and the throughput without it.

    python bench/img_convert.py            # 1 GiB
    python bench/img_convert.py --size 128M
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kvmpy.block.sizes import parse_size


def make_source(path: Path, size: int, seed: int = 42) -> None:
    """Write ``size`` bytes: 1 MiB extents, roughly 40% random, 30% zero, 30% repeated."""
    rng = np.random.default_rng(seed)
    ext = 1 << 20
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, ext):
            n = min(ext, size - off)
            kind = rng.random()
            if kind < 0.4:
                buf = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            elif kind < 0.7:
                continue  # leave a hole: zeros
            else:
                buf = (bytes(range(256)) * (n // 256 + 1))[:n]
            os.pwrite(f.fileno(), buf, off)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="source size (default 1G)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N interleaved runs per tool")
    args = ap.parse_args()
    size = parse_size(args.size)
    qemu = shutil.which("qemu-img")
    if qemu is None:
        print("qemu-img not found (apt-get install qemu-utils)", file=sys.stderr)
        return 1
    kvmpy = [sys.executable, "-m", "kvmpy.block.img_cli"]
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        envs = {"qemu-img": None, "kvmpy-img": env}
        tools = (("qemu-img", [qemu]), ("kvmpy-img", kvmpy))
        # Start-up: a 1 MiB convert (the first run of each tool also warms its caches).
        tiny = tmp / "tiny.raw"
        make_source(tiny, 1 << 20)
        startup = {"qemu-img": float("inf"), "kvmpy-img": float("inf")}
        for i in range(args.repeat + 1):
            for tool, base in tools:
                out = tmp / "tiny.out"
                t = timed(base + ["convert", "-f", "raw", "-O", "qcow2", str(tiny), str(out)],
                          envs[tool])
                if i:
                    startup[tool] = min(startup[tool], t)
                out.unlink()
        src = tmp / "src.raw"
        make_source(src, size)
        results = []
        for name, fmt_in, fmt_out, source in (("raw->qcow2", "raw", "qcow2", src),
                                               ("qcow2->raw", "qcow2", "raw", tmp / "q.qcow2")):
            if fmt_in == "qcow2":
                subprocess.run([qemu, "convert", "-O", "qcow2", str(src), str(source)], check=True)
            times = {"qemu-img": float("inf"), "kvmpy-img": float("inf")}
            # Interleave the tools and keep each one's best run: the machine is shared, and
            # page-cache state swings single runs by several times.
            for _ in range(args.repeat):
                for tool, base in tools:
                    out = tmp / f"out.{tool}.{fmt_out}"
                    if out.exists():
                        out.unlink()
                    t = timed(base + ["convert", "-f", fmt_in, "-O", fmt_out, str(source),
                                      str(out)], envs[tool])
                    times[tool] = min(times[tool], t)
                    subprocess.run([qemu, "compare", "-f", fmt_in, "-F", fmt_out, str(source),
                                    str(out)], check=True, stdout=subprocess.DEVNULL)
                    out.unlink()
            mbs = {t: size / 1e6 / v for t, v in times.items()}
            ratio = mbs["kvmpy-img"] / mbs["qemu-img"]
            results.append((name, mbs, ratio))
            print(f"{name:11s} qemu-img {mbs['qemu-img']:8.1f} MB/s   kvmpy-img "
                  f"{mbs['kvmpy-img']:8.1f} MB/s   ratio {ratio:.2f}x", flush=True)
            net = {t: size / 1e6 / max(v - startup[t], 1e-3) for t, v in times.items()}
            print(f"{'':11s} without start-up: qemu-img {net['qemu-img']:8.1f} MB/s   kvmpy-img "
                  f"{net['kvmpy-img']:8.1f} MB/s   ratio {net['kvmpy-img'] / net['qemu-img']:.2f}x",
                  flush=True)
        print(f"start-up (1 MiB convert): qemu-img {startup['qemu-img'] * 1e3:.0f} ms   "
              f"kvmpy-img {startup['kvmpy-img'] * 1e3:.0f} ms")
    worst = min(r for _, _, r in results)
    print(f"size {size} bytes; worst ratio {worst:.2f}x (goal >= 0.70x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

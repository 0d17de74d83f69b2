"""The test guests build into valid multiboot ELF32 kernels and behave as their
README contract says under real QEMU (TCG): QEMU is the oracle for the guests themselves."""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.guests.build import GuestBuildError, available_guests, build_guest

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

EXIT_PASS = (0x10 << 1) | 1
EXIT_FAIL = (0x11 << 1) | 1
ALL_GUESTS = ["hello", "smp", "timer", "serial_rx", "mmio", "memwriter", "demo", "counter",
              "dirtier", "pio_loop", "triplefault", "vgafill", "script"]


def qemu_argv(elf: Path, append: str = "", smp: int = 1) -> list[str]:
    assert QEMU is not None
    return [QEMU, "-accel", "tcg", "-m", "64", "-smp", str(smp), "-display", "none",
            "-nodefaults", "-serial", "stdio", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", str(elf), "-append", append]


def run_guest(name: str, append: str = "", smp: int = 1) -> tuple[int, str]:
    proc = subprocess.run(qemu_argv(build_guest(name), append, smp), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=10)
    return proc.returncode, proc.stdout.decode()


class Console:
    """A running QEMU whose COM1 we read incrementally (for guests that never exit)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.out = b""

    def read_until(self, needle: bytes, timeout: float = 8.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while needle not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen; got {self.out[-500:]!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"QEMU exited before {needle!r}; got {self.out!r}")
                self.out += chunk
        return self.out.decode()

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        return rc


# ---------------------------------------------------------------- building

def test_every_guest_has_a_source() -> None:
    assert available_guests() == sorted(ALL_GUESTS)


@pytest.mark.parametrize("name", ALL_GUESTS)
def test_guest_is_multiboot_elf32(name: str) -> None:
    data = build_guest(name).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 1 and data[5] == 1     # ELF32, little-endian
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    assert (e_type, e_machine) == (2, 3)                                # ET_EXEC, EM_386
    for off in range(0, min(len(data), 8192) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == 0x1BADB002:
            assert (magic + flags + checksum) & 0xFFFFFFFF == 0
            assert flags & 0x00010000 == 0      # plain ELF, no a.out kludge
            break
    else:
        pytest.fail("no multiboot header in the first 8 KiB")


def test_build_is_cached_and_keyed_by_content(tmp_path: Path) -> None:
    first = build_guest("hello", tmp_path)
    mtime = first.stat().st_mtime_ns
    assert build_guest("hello", tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    assert build_guest("demo", tmp_path) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name,
                                                                build_guest("demo", tmp_path).name])


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(build_guest("smp", tmp_path))
        except BaseException as exc:    # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]   # no temp leftovers


@pytest.mark.parametrize("bad", ["nope", "lib", "lib64", "../hello", "Hello"])
def test_unknown_guest_is_a_clear_error(bad: str) -> None:
    with pytest.raises(GuestBuildError):
        build_guest(bad)


def test_cli_prints_paths_and_rejects_bad_names() -> None:
    script = Path(__file__).with_name("build.py")
    ok = subprocess.run([sys.executable, str(script), "hello"], capture_output=True, text=True)
    assert ok.returncode == 0
    assert Path(ok.stdout.strip()) == build_guest("hello")
    bad = subprocess.run([sys.executable, str(script), "nope"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: unknown guest 'nope'")
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------- behaviour under QEMU

@needs_qemu
def test_hello_reports_multiboot_info_deterministically() -> None:
    rc, out = run_guest("hello", "alpha=1 beta")
    assert rc == EXIT_PASS
    lines = out.splitlines()
    assert lines[0] == "hello from kvmpy test guest"
    assert lines[1].startswith("mbi flags 0x") and int(lines[1][10:], 16) & 0x45 == 0x45
    assert lines[2] == "mem_lower 639 KiB"
    upper = int(lines[3].split()[1])
    assert 62 * 1024 < upper < 64 * 1024
    assert lines[4].startswith('cmdline "') and lines[4].endswith(' alpha=1 beta"')
    mmap = [line for line in lines if line.startswith("mmap ") and "len" in line]
    assert mmap and mmap[0].startswith("mmap 0000000000000000 len ")
    assert f"mmap entries {len(mmap)}" in lines
    assert lines[-1] == "bye"
    assert run_guest("hello", "alpha=1 beta") == (rc, out)


@needs_qemu
def test_demo_draws_and_exits() -> None:
    rc, out = run_guest("demo", "cols=40 rows=12")
    assert rc == 0  # the i8042 reset, turned into a clean exit by -no-reboot
    assert "kvmpy demo guest" in out and 'cmdline: "' in out
    rows = [line for line in out.splitlines() if line.startswith("  ") and len(line) == 42]
    assert len(rows) == 12 and any("#" in r for r in rows)
    assert out.rstrip().endswith("done: resetting through the i8042 (-no-reboot makes that a clean exit)")


@needs_qemu
@pytest.mark.parametrize("lm,mode", [("1", "long"), ("0", "32")])
def test_timer_counts_pit_ticks(lm: str, mode: str) -> None:
    start = time.monotonic()
    rc, out = run_guest("timer", f"hz=500 ticks=30 lm={lm}")
    elapsed = time.monotonic() - start
    assert rc == EXIT_PASS
    assert out.splitlines() == [f"timer: hz=500 ticks=30 mode={mode}", "tick 10", "tick 20",
                                "tick 30", "timer done"]
    assert elapsed >= 30 / 500


@needs_qemu
@pytest.mark.parametrize("lm,mode", [("1", "long"), ("0", "32")])
def test_serial_rx_echoes_uppercase_from_irq4(lm: str, mode: str) -> None:
    con = Console(qemu_argv(build_guest("serial_rx"), f"lm={lm}"))
    try:
        con.read_until(b"ready\n")
        assert con.proc.stdin is not None
        con.proc.stdin.write(b"abc\rx1q")
        con.proc.stdin.flush()
        out = con.read_until(b"bye 6\n")
        assert con.proc.wait(timeout=5) == EXIT_PASS
    finally:
        con.close()
    assert out == f"serial_rx: mode={mode}\nready\nABC\nX1\nbye 6\n"


@needs_qemu
def test_mmio_prints_what_it_reads() -> None:
    rc, out = run_guest("mmio")
    assert rc == EXIT_PASS
    lines = out.splitlines()
    assert lines[0] == "mmio: addr 0xd0000000"
    assert [line.split()[0] for line in lines[1:]] == [
        "read32", "read16", "read8", "write32", "write8", "readback32", "lapic", "lapic",
        "mmio"]
    version = int(lines[8].split()[-1], 16)
    assert version & 0xFF >= 0x10        # an integrated APIC
    assert lines[-1] == "mmio done"


@needs_qemu
def test_memwriter_counts_pages_and_rejects_bad_ranges() -> None:
    assert run_guest("memwriter") == (
        EXIT_PASS, "memwriter: start 0x00400000 pages 128 stride 2\ndone 128\n")
    assert run_guest("memwriter", "start=0x800000 pages=3 stride=1") == (
        EXIT_PASS, "memwriter: start 0x00800000 pages 3 stride 1\ndone 3\n")
    rc, out = run_guest("memwriter", "start=0x100000")
    assert (rc, out.splitlines()[-1]) == (EXIT_FAIL, "bad range")
    rc, out = run_guest("memwriter", "start=0x3f00000 pages=1000")
    assert (rc, out.splitlines()[-1]) == (EXIT_FAIL, "bad range")


@needs_qemu
def test_smp_starts_every_ap() -> None:
    rc, out = run_guest("smp", "cpus=3", smp=3)
    assert rc == EXIT_PASS
    lines = out.splitlines()
    assert lines[0] == "smp: bsp apic id 0, expecting 3 cpus"
    assert sorted(lines[1:3]) == ["cpu 1 up", "cpu 2 up"]
    assert lines[3:] == ["smp: 3 of 3 cpus up"]


@needs_qemu
def test_smp_reports_missing_cpus() -> None:
    rc, out = run_guest("smp", "cpus=2", smp=1)
    assert (rc, out.splitlines()[-1]) == (EXIT_FAIL, "smp: 1 of 2 cpus up")


@needs_qemu
def test_counter_keeps_counting() -> None:
    con = Console(qemu_argv(build_guest("counter")))
    try:
        out = con.read_until(b"count 0x00300000\n")
    finally:
        con.close()
    assert out.startswith("counter: addr 0x00200000\ncount 0x00100000\ncount 0x00200000\n")


@needs_qemu
def test_dirtier_makes_passes() -> None:
    con = Console(qemu_argv(build_guest("dirtier"), "start_mb=4 size_mb=8"))
    try:
        out = con.read_until(b"BBB")
    finally:
        con.close()
    assert out.startswith("dirtier: 0x00400000-0x00c00000\nBBB")
    rc, out = run_guest("dirtier", "start_mb=1")
    assert (rc, out) == (EXIT_FAIL, "bad range\n")

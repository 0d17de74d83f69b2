"""NestedBed end to end: boot L1 for real and run commands in it."""

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from kvmpy.testbed.bed import BedBootError, BedError, BedStalled, BedUnavailable, NestedBed, normalize_shares

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="needs qemu-system-x86_64 (apt: qemu-system-x86)")
not_in_bed = pytest.mark.skipif(os.environ.get("KVMPY_IN_BED") == "1",
                                reason="booting TCG inside the TCG bed would take far too long")

PROBE = r"""
import fcntl, os, pathlib, sys
fd = os.open("/dev/kvm", os.O_RDWR)
api = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
print("api", api, "kvm_amd", pathlib.Path("/sys/module/kvm_amd").is_dir(),
      "pvm", pathlib.Path("/sys/module/kvm_pvm").exists(), "in_bed", os.environ.get("KVMPY_IN_BED"))
pathlib.Path(sys.argv[1], "written-in-l1").write_text(os.getcwd())
sys.exit(3)
"""


@needs_qemu
@not_in_bed
def test_bed_has_a_complete_kvm_and_propagates_exit_status(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    bed = NestedBed([share])
    res = bed.run([sys.executable, "-c", PROBE, str(share)], cwd=share, timeout=600)
    assert res.returncode == 3, res.console
    assert "api 12 kvm_amd True pvm False in_bed 1" in res.output, res.console
    assert (share / "written-in-l1").read_text() == str(share)  # writable, same absolute path
    t = res.timings
    assert t.boot_s is not None and t.command_s is not None and 0 < t.boot_s < t.total_s
    print(f"L1 boot-to-command {t.boot_s:.1f} s (guest uptime {t.guest_uptime_at_start_s} s), "
          f"command {t.command_s:.1f} s, total {t.total_s:.1f} s")


@needs_qemu
@not_in_bed
def test_boot_timeout_kills_qemu() -> None:
    with pytest.raises(BedBootError, match="did not reach the command within 1 s"):
        NestedBed([], boot_timeout=1).run(["true"], cwd=Path("/"), timeout=60)


@needs_qemu
@not_in_bed
def test_a_stopped_heartbeat_is_taken_as_wedged_and_a_silent_command_is_not(tmp_path: Path) -> None:
    # A command that is merely silent for longer than the stall timeout is fine...
    res = NestedBed([], stall_timeout=15).run(["sleep", "30"], cwd=Path("/"), timeout=300, scratch=tmp_path)
    assert res.returncode == 0
    # ...but when L1's heartbeat stops (SIGSTOP stands in for an emulated machine that hangs),
    # the bed gives up after the stall timeout rather than the whole-run timeout.
    freeze = f"kill -STOP $(cat {tmp_path}/heartbeat.pid); sleep 600"
    with pytest.raises(BedStalled, match="L1's heartbeat stopped for [0-9]+ s"):
        NestedBed([], stall_timeout=15).run(["sh", "-c", freeze], cwd=Path("/"), timeout=300, scratch=tmp_path)


@needs_qemu
@not_in_bed
def test_a_command_that_stops_making_progress_is_taken_as_wedged(tmp_path: Path) -> None:
    # The command appends to a file the caller watches, then hangs with L1's heartbeat still going
    # (a VMM stuck in L1's kernel looks like this): the bed gives up after the progress timeout.
    mark = tmp_path / "progress"
    probe = lambda: mark.stat().st_size if mark.exists() else 0  # noqa: E731
    steps = f"for i in 1 2 3; do echo step >> {mark}; sleep 3; done; sleep 600"
    started = time.monotonic()
    with pytest.raises(BedStalled, match="the command made no progress for [0-9]+ s"):
        NestedBed([], stall_timeout=120, progress=probe, progress_timeout=20).run(
            ["sh", "-c", steps], cwd=Path("/"), timeout=500, scratch=tmp_path)
    assert mark.read_text().count("step") == 3  # it kept going while the file grew
    assert time.monotonic() - started < 300


def test_missing_qemu_is_a_clear_error() -> None:
    with pytest.raises(BedUnavailable, match="/nonexistent/qemu not found.*qemu-system-x86"):
        NestedBed([], qemu="/nonexistent/qemu").run(["true"])


@needs_qemu
def test_qemu_that_dies_at_once_is_a_boot_error() -> None:
    # `false` is a real program that exits 1 at once, standing in for a QEMU that cannot start.
    with pytest.raises(BedBootError, match="L1 stopped before running the command"):
        NestedBed([], qemu="false").run(["true"], cwd=Path("/"), timeout=60)


def test_shares_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    assert normalize_shares([tmp_path / "a" / "b", tmp_path / "c", tmp_path / "a", tmp_path / "c"]) == \
        [tmp_path / "a", tmp_path / "c"]
    with pytest.raises(BedError, match="refusing to share /"):
        normalize_shares([Path("/")])
    with pytest.raises(BedError, match="not a directory"):
        normalize_shares([tmp_path / "missing"])
    with pytest.raises(BedError, match="newlines"):
        bad = tmp_path / "x\ny"
        bad.mkdir()
        normalize_shares([bad])


def test_job_env_passes_through_and_marks_the_bed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMPY_SOMETHING", "1")
    monkeypatch.setenv("UNRELATED_VAR", "x")
    env = NestedBed([]).job_env({"EXTRA": "y"})
    assert env["KVMPY_IN_BED"] == "1" and env["KVMPY_SOMETHING"] == "1" and env["EXTRA"] == "y"
    assert env["PATH"] == os.environ["PATH"] and "UNRELATED_VAR" not in env
    with pytest.raises(BedError, match="bad environment"):
        NestedBed([]).job_env({"A=B": "1"})


def test_console_memory_is_bounded_and_markers_still_count() -> None:
    from kvmpy.testbed.bed import _Console

    seen: list[str] = []
    con = _Console("n0nce", None, seen.append, max_bytes=100)
    con.feed("kvmpy-bed: init started")
    con.feed("kvmpy-bed[n0nce]: command started uptime 4.5")
    for i in range(50):
        con.feed(f"line {i:04d}")
    con.feed("kvmpy-bed[other]: exit 0")  # a command cannot forge the marker without the nonce
    con.feed("kvmpy-bed[n0nce]: exit 7 uptime 9.0")
    assert con.started.is_set() and con.finished.is_set() and con.exit_status == 7
    assert con.uptime_at_start == 4.5
    assert len(seen) == 51  # every output line is streamed, even the ones not kept
    out = con.output_text()
    assert out.startswith("line 0000\n") and "console lines dropped past 100 bytes" in out
    assert len(out) < 200 and "line 0049" in con.tail()


def test_kernel_stall_reports_are_not_progress() -> None:
    from kvmpy.testbed.bed import _Console

    con = _Console("n0nce", None, None)
    con.feed("kvmpy-bed[n0nce]: command started uptime 4.5")
    con.last_line_at = 0.0
    con.feed("[  812.041331] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [qemu-system-x86:812]")
    con.feed("[  840.117002] rcu: INFO: rcu_preempt self-detected stall on CPU")
    assert con.last_line_at == 0.0  # a wedged L1 repeats these; they must not reset the stall clock
    con.feed("tests/linux/test_boot.py::test_x PASSED")
    assert con.last_line_at > 0.0


@needs_qemu
@not_in_bed
def test_qemu_dies_with_its_parent(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    script = ("import sys; from pathlib import Path; from kvmpy.testbed.bed import NestedBed\n"
              "bed = NestedBed([Path(sys.argv[1])], on_line=lambda l: print(l, flush=True))\n"
              "bed.run(['sleep', '600'], cwd=Path('/'), timeout=900, scratch=Path(sys.argv[1]))\n")
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if line.startswith("kvmpy-bed: init started"):
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

    def qemus() -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if str(tmp_path).encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                continue
        return found

    deadline = time.monotonic() + 10
    while qemus() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemus() == []

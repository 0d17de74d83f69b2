"""NestedBed: run one command inside a nested L1 Linux VM that has a complete KVM.

L1 is ``qemu-system-x86_64`` under TCG with ``-cpu max`` (which exposes AMD SVM),
booting Debian's generic kernel; its kvm-amd module gives L1 a complete /dev/kvm.
The host root is visible read-only over 9p and the command runs with it as its
root (moved onto / in a mount namespace of its own, not a chroot, so user namespaces
work) with the host's own Python, so paths are identical inside. Writable 9p shares are
mounted at their own absolute paths: the caller's directories and a scratch
("control") directory that carries the job description in and results out.

Each run boots a fresh L1 and powers it off at the end. Python under TCG is ~40x
slower than on the host, so callers batch their work into one run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kvmpy.testbed.kernel_image import KernelImageError, pvh_vmlinux
from kvmpy.testbed.l1_initramfs import CTL_TAG, HOST_TAG, build_l1_initramfs
from kvmpy.tools.fetch import FetchError, KernelPackage, cache_root, fetch_busybox, fetch_kernel
from kvmpy.tools.initramfs import InitramfsError

log = logging.getLogger(__name__)

# Environment variables handed to the command unless the caller overrides them.
PASSTHROUGH_ENV = ("PATH", "HOME", "USER", "LOGNAME", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE",
                   "TZ", "TERM", "PYENV_ROOT", "PYENV_VERSION", "VIRTUAL_ENV")
IN_BED_ENV = "KVMPY_IN_BED"
# loglevel=5 (rather than quiet, which is 4): warnings as before, plus the default-level lines that carry
# a stack trace, so an L1 soft lockup or panic shows where it happened in the console log.
# softlockup_panic=1: a CPU of L1 stuck for 20 s has not recovered in any run seen (one sat 700 s in
# kvm-pit while the other CPU kept the heartbeat going, so no wedge was detected); panicking turns it
# into a dead L1, whose unfinished tests the pytest plugin re-runs in a fresh one.
# watchdog_thresh=30 (a soft lockup after 60 s, not 20): L1's vCPUs are threads of a TCG QEMU on a
# two-core host. The 23-48 s lockups that ended L1s came when the host was busiest, in plain code
# (clear_page_erms, kvm_destroy_vm's IPI wait), which reads as vCPU threads the host did not run
# while L1's clock went on (not confirmed). A CPU that is really stuck still ends L1, 40 s later.
KERNEL_CMDLINE = "console=ttyS0 panic=-1 loglevel=5 softlockup_panic=1 watchdog_thresh=30"
_ERROR_PREFIX = "kvmpy-bed: error: "
_TAIL_LINES = 40
_MAX_CONSOLE_BYTES = 64 << 20
_MAX_LINE_BYTES = 64 << 10
# A line of L1's kernel log ("[  123.456789] ..."): soft-lockup and RCU-stall reports repeat while
# the machine is wedged, so they are not taken as a sign of progress.
_KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\]")


class BedError(RuntimeError):
    """The bed could not run the command; ``console`` holds what L1 printed."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


class BedUnavailable(BedError):
    """A prerequisite (qemu-system-x86_64, kernel, busybox) is missing."""


class BedBootError(BedError):
    """L1 failed to boot, or died without reporting the command's exit status."""


class BedTimeout(BedError):
    """The run exceeded its time limit; QEMU was killed."""


class BedStalled(BedTimeout):
    """L1's heartbeat (a shell loop bumping ctl/heartbeat) stopped for the stall timeout
    while the command ran: the emulated machine is wedged, not merely the command (QEMU killed)."""


class BedDied(BedBootError):
    """L1 itself went away while the command ran (its kernel panicked, or QEMU crashed)."""


@dataclass(frozen=True)
class BedTimings:
    """Wall-clock seconds of one run, measured on the host."""

    boot_s: float | None        # QEMU start -> the command starts in L1
    command_s: float | None     # the command's run time, as seen on the console
    total_s: float              # QEMU start -> QEMU gone
    guest_uptime_at_start_s: float | None  # L1's /proc/uptime when the command started


@dataclass(frozen=True)
class PreparedBed:
    """What a boot needs, from the cache."""

    kernel: KernelPackage
    boot_image: Path   # the PVH vmlinux when it could be extracted, else the bzImage
    initrd: Path


@dataclass(frozen=True)
class BedResult:
    returncode: int
    output: str       # the command's console output (stdout and stderr interleaved)
    console: str      # everything L1 printed, markers included
    timings: BedTimings


def project_root() -> Path | None:
    """The checkout kvmpy is imported from, if it is a source checkout (not site-packages)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "setup.cfg").exists() or (root / "pyproject.toml").exists():
        return root
    return None


def _check_share_path(path: Path) -> Path:
    path = path.resolve()
    text = str(path)
    if any(c in text for c in "\n\r\0") or text != text.strip():
        raise BedError(f"cannot share a path with newlines or edge spaces: {text!r}")
    if path == Path("/"):
        raise BedError("refusing to share / writable (the host root is already visible read-only)")
    if not path.is_dir():
        raise BedError(f"share {text} is not a directory")
    return path


def normalize_shares(paths: Sequence[Path]) -> list[Path]:
    """Resolve, dedupe and drop shares nested inside another share; parents come first."""
    resolved = sorted({_check_share_path(Path(p)) for p in paths}, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for p in resolved:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return kept


def _qemu_opt(value: str) -> str:
    return value.replace(",", ",,")  # QEMU option syntax escapes commas by doubling


@dataclass
class _Console:
    """What the reader thread saw on L1's serial console (memory-bounded)."""

    nonce: str
    on_line: Callable[[str], None] | None
    on_output: Callable[[str], None] | None = None
    max_bytes: int = _MAX_CONSOLE_BYTES
    before: list[str] = field(default_factory=list)   # boot, up to the start marker
    output: list[str] = field(default_factory=list)   # the command's lines
    after: list[str] = field(default_factory=list)    # the exit marker and power-off
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    stored: int = 0
    dropped: int = 0
    started_at: float | None = None
    exited_at: float | None = None
    exit_status: int | None = None
    uptime_at_start: float | None = None
    last_line_at: float = field(default_factory=time.monotonic)
    error: str | None = None
    started: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def _keep(self, bucket: list[str], line: str) -> None:
        # Past the budget, lines are counted but not kept (the console log file has them all).
        if self.stored + len(line) > self.max_bytes:
            self.dropped += 1
            return
        self.stored += len(line) + 1
        bucket.append(line)

    def feed(self, line: str) -> None:
        marker = f"kvmpy-bed[{self.nonce}]: "
        if not _KERNEL_LINE.match(line):
            self.last_line_at = time.monotonic()
        self.recent.append(line)
        if line.startswith(marker):
            words = line[len(marker):].split()
            if words[:2] == ["command", "started"] and not self.started.is_set():
                self.before.append(line)
                self.started_at = time.monotonic()
                self.uptime_at_start = _float_after(words, "uptime")
                self.started.set()
            elif words[:1] == ["exit"] and len(words) > 1 and words[1].lstrip("-").isdigit():
                self.after.append(line)
                self.exited_at = time.monotonic()
                self.exit_status = int(words[1])
                self.finished.set()
        elif not self.started.is_set():
            if line.startswith(_ERROR_PREFIX):
                self.error = line[len(_ERROR_PREFIX):]
            self._keep(self.before, line)
        elif not self.finished.is_set():
            self._keep(self.output, line)
            if self.on_output is not None:
                self.on_output(line)
        else:
            self._keep(self.after, line)
        if self.on_line is not None:
            self.on_line(line)

    def output_text(self) -> str:
        note = [f"[kvmpy-bed: {self.dropped} console lines dropped past {self.max_bytes} bytes]"] \
            if self.dropped else []
        return "".join(line + "\n" for line in self.output + note)

    def text(self) -> str:
        return "\n".join(self.before + self.output + self.after)

    def tail(self) -> str:
        return "\n".join(self.recent)


def _float_after(words: list[str], key: str) -> float | None:
    try:
        return float(words[words.index(key) + 1])
    except (ValueError, IndexError):
        return None


class NestedBed:
    """Boots L1 and runs commands in it; one fresh VM per :meth:`run`.

    ``shares`` are host directories mounted writable in L1 at their same absolute
    path (by default the kvmpy checkout, when kvmpy runs from one).
    """

    def __init__(self, shares: Sequence[Path] | None = None, *, qemu: str | None = None,
                 memory_mib: int = 4096, smp: int = 2, kernel_flavor: str = "amd64",
                 cache: Path | None = None, boot_timeout: float = 300.0,
                 stall_timeout: float | None = None,
                 progress: Callable[[], object] | None = None, progress_timeout: float | None = None,
                 on_line: Callable[[str], None] | None = None,
                 on_output: Callable[[str], None] | None = None) -> None:
        if shares is None:
            root = project_root()
            shares = [root] if root is not None else []
        self.shares = normalize_shares(shares)
        self.qemu = qemu or os.environ.get("KVMPY_BED_QEMU") or "qemu-system-x86_64"
        self.memory_mib = memory_mib
        self.smp = smp
        self.kernel_flavor = kernel_flavor
        self.cache = cache or cache_root()
        self.boot_timeout = boot_timeout
        self.stall_timeout = stall_timeout  # None: silence is never taken as a wedge
        # ``progress()`` (e.g. the size of a report file the command appends to) unchanged for
        # ``progress_timeout`` seconds is a wedge too: L1 alive, its heartbeat going, the command stuck
        # in L1's kernel (a process SIGKILL does not end, a 9p share that stopped answering).
        self.progress = progress
        self.progress_timeout = progress_timeout
        self.on_line = on_line  # every console line
        self.on_output = on_output  # only the command's output lines
        self._prepared: PreparedBed | None = None

    def prepare(self) -> PreparedBed:
        """Fetch the kernel and busybox and build the initramfs (cached; safe to call twice)."""
        if self._prepared is None:
            try:
                kernel = fetch_kernel(self.kernel_flavor, self.cache)
                busybox = fetch_busybox(self.cache)
                initrd = build_l1_initramfs(kernel, busybox, self.cache / "initramfs")
            except (FetchError, InitramfsError) as exc:
                raise BedUnavailable(f"cannot prepare the L1 kernel/initramfs: {exc}") from exc
            try:
                boot_image = pvh_vmlinux(kernel.vmlinuz, self.cache / "vmlinux")
            except (KernelImageError, OSError) as exc:
                log.warning("booting the bzImage (slower under TCG): %s", exc)
                boot_image = kernel.vmlinuz
            self._prepared = PreparedBed(kernel, boot_image, initrd)
        return self._prepared

    def qemu_argv(self, prepared: PreparedBed, ctl: Path) -> list[str]:
        argv = [
            self.qemu, "-accel", "tcg,thread=multi", "-cpu", "max",
            "-smp", str(self.smp), "-m", str(self.memory_mib),
            "-kernel", str(prepared.boot_image), "-initrd", str(prepared.initrd), "-append", KERNEL_CMDLINE,
            "-nodefaults", "-serial", "stdio", "-display", "none", "-no-reboot",
            "-virtfs", f"local,path=/,mount_tag={HOST_TAG},security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={_qemu_opt(str(ctl))},mount_tag={CTL_TAG},security_model=none,"
                       "multidevs=remap",
        ]
        for i, share in enumerate(self._shares_for(ctl)):
            argv += ["-virtfs", f"local,path={_qemu_opt(str(share))},mount_tag=kvmpy{i},"
                                "security_model=none,multidevs=remap"]
        return argv

    def _shares_for(self, ctl: Path) -> list[Path]:
        # The control dir is bind-mounted by /init; a share that contains it already exposes it.
        return [s for s in self.shares if s != ctl]

    def _write_job(self, ctl: Path, nonce: str, argv: Sequence[str], cwd: Path,
                   env: Mapping[str, str]) -> None:
        mounts = [f"kvmpy{i} {s}" for i, s in enumerate(self._shares_for(ctl))]
        # The control dir appears at its own path too, after the shares (it may sit inside one).
        mounts.append(f"{CTL_TAG} {ctl}")
        (ctl / "mounts").write_text("\n".join(mounts) + "\n")
        (ctl / "nonce").write_text(nonce + "\n")
        (ctl / "ctlpath").write_text(str(ctl) + "\n")
        env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
        script = (
            "# generated by kvmpy.testbed.bed; runs in L1 with the host root as its root\n"
            f"cd -- {shlex.quote(str(cwd))} || "
            f"{{ echo {shlex.quote(f'kvmpy-bed: cannot cd to {cwd}')} >&2; exit 125; }}\n"
            f"exec /usr/bin/env -i {env_words} {' '.join(shlex.quote(a) for a in argv)}\n"
        )
        (ctl / "job.sh").write_text(script)

    def job_env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update({k: v for k, v in os.environ.items() if k.startswith("KVMPY_")})
        env.update({"PYTHONUNBUFFERED": "1", "TMPDIR": "/tmp", IN_BED_ENV: "1"})
        env.update(extra or {})
        for k, v in env.items():
            if not k or "=" in k or "\0" in k or "\0" in v:
                raise BedError(f"bad environment variable {k!r}")
        return env

    def _progress(self) -> object:
        """The caller's progress mark now (None without a probe, or when it fails)."""
        try:
            return None if self.progress is None else self.progress()
        except OSError:
            return None

    def run(self, argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 1200.0, scratch: Path | None = None,
            console_log: Path | None = None) -> BedResult:
        """Boot L1, run ``argv`` in ``cwd`` (default: the current directory), power off.

        ``env`` adds to/overrides the passed-through environment. ``scratch`` (created
        if None) is shared writable at its own path; the command may leave files there.
        ``timeout`` bounds the whole run, boot included. Raises a :class:`BedError`
        subclass when the command's exit status cannot be obtained.
        """
        if not argv or any("\0" in a for a in argv):
            raise BedError("no command given, or an argument contains NUL")
        if shutil.which(self.qemu) is None:
            raise BedUnavailable(f"{self.qemu} not found: install the Debian package qemu-system-x86")
        prepared = self.prepare()
        cwd = Path(cwd or os.getcwd()).resolve()
        own_scratch = scratch is None
        ctl = Path(tempfile.mkdtemp(prefix="kvmpy-bed-")) if own_scratch else _check_share_path(scratch)
        try:
            nonce = secrets.token_hex(8)
            self._write_job(ctl, nonce, argv, cwd, self.job_env(env))
            return self._boot(self.qemu_argv(prepared, ctl), ctl, nonce, timeout, console_log)
        finally:
            if own_scratch:
                shutil.rmtree(ctl, ignore_errors=True)

    def _boot(self, qemu_argv: list[str], ctl: Path, nonce: str, timeout: float,
              console_log: Path | None) -> BedResult:
        log_fh = open(console_log, "w", encoding="utf-8") if console_log else None

        def on_line(line: str) -> None:
            log.debug("L1: %s", line)
            if log_fh is not None:
                log_fh.write(line + "\n")
                log_fh.flush()
            if self.on_line is not None:
                self.on_line(line)

        con = _Console(nonce, on_line, self.on_output)
        stderr_path = ctl / "qemu.stderr"
        t0 = time.monotonic()
        log.info("booting L1: %s", shlex.join(qemu_argv))
        with open(stderr_path, "wb") as err_fh:
            try:
                proc = subprocess.Popen(qemu_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=err_fh, start_new_session=True,
                                        preexec_fn=_die_with_parent)
            except OSError as exc:
                raise BedUnavailable(f"cannot start {self.qemu}: {exc}") from exc
        reader = threading.Thread(target=_read_console, args=(proc, con), daemon=True,
                                  name="kvmpy-bed-console")
        reader.start()
        try:
            self._wait(proc, con, t0, timeout, stderr_path)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=10)
            if log_fh is not None:
                log_fh.close()
        t_end = time.monotonic()
        assert con.exit_status is not None
        timings = BedTimings(
            boot_s=(con.started_at - t0) if con.started_at else None,
            command_s=(con.exited_at - con.started_at) if con.exited_at and con.started_at else None,
            total_s=t_end - t0,
            guest_uptime_at_start_s=con.uptime_at_start,
        )
        log.info("L1 command exited %d (boot %.1f s, command %.1f s)", con.exit_status,
                 timings.boot_s or 0.0, timings.command_s or 0.0)
        return BedResult(con.exit_status, con.output_text(), con.text(), timings)

    def _wait(self, proc: subprocess.Popen[bytes], con: _Console, t0: float, timeout: float,
              stderr_path: Path) -> None:
        boot_deadline = t0 + min(self.boot_timeout, timeout)
        deadline = t0 + timeout

        def qemu_err() -> str:
            try:
                return stderr_path.read_text(errors="replace").strip()[-1000:]
            except OSError:
                return ""

        while not con.started.is_set():
            if proc.poll() is not None or con.error is not None:
                _quiet_wait(proc, 15)  # /init powers off after an error line
                why = con.error or qemu_err() or f"QEMU exited with status {proc.returncode}"
                raise BedBootError(f"L1 stopped before running the command: {why}\n"
                                   f"--- L1 console (tail) ---\n{con.tail()}", con.text())
            if time.monotonic() > boot_deadline:
                raise BedBootError(
                    f"L1 did not reach the command within {boot_deadline - t0:.0f} s (QEMU killed)\n"
                    f"--- L1 console (tail) ---\n{con.tail()}\n--- QEMU stderr ---\n{qemu_err()}",
                    con.text())
            con.started.wait(0.2)
        heartbeat_path = stderr_path.parent / "heartbeat"
        last_beat, last_beat_at = _heartbeat(heartbeat_path), time.monotonic()
        last_progress, last_progress_at = self._progress(), last_beat_at
        while not con.finished.is_set():
            if proc.poll() is not None:
                con.finished.wait(2)  # the reader may still be draining the pipe
                if con.finished.is_set():
                    break
                raise BedDied(f"L1 died while running the command (QEMU status {proc.returncode}, "
                                   f"{qemu_err() or 'no QEMU error'})\n"
                                   f"--- L1 console (tail) ---\n{con.tail()}", con.text())
            now = time.monotonic()
            if now > deadline:
                raise BedTimeout(f"the command did not finish within {timeout:.0f} s (QEMU killed)\n"
                                 f"--- L1 console (tail) ---\n{con.tail()}", con.text())
            beat = _heartbeat(heartbeat_path)
            if beat != last_beat:
                last_beat, last_beat_at = beat, now
            if self.stall_timeout is not None and now - max(last_beat_at, con.last_line_at) > self.stall_timeout:
                raise BedStalled(f"L1's heartbeat stopped for {now - last_beat_at:.0f} s: the nested VM "
                                 f"is wedged (QEMU killed)\n--- L1 console (tail) ---\n{con.tail()}",
                                 con.text())
            if self.progress_timeout is not None:
                mark = self._progress()
                if mark != last_progress:
                    last_progress, last_progress_at = mark, now
                elif now - last_progress_at > self.progress_timeout:
                    raise BedStalled(f"the command made no progress for {now - last_progress_at:.0f} s: it is "
                                     f"stuck in L1 (QEMU killed)\n--- L1 console (tail) ---\n{con.tail()}",
                                     con.text())
            con.finished.wait(0.2)
        # poweroff -f follows the exit marker; give it a moment before killing.
        _quiet_wait(proc, 30)


def _heartbeat(path: Path) -> bytes:
    try:
        return path.read_bytes()[:32]
    except OSError:
        return b""


def _quiet_wait(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _read_console(proc: subprocess.Popen[bytes], con: _Console) -> None:
    assert proc.stdout is not None
    while True:
        raw = proc.stdout.readline(_MAX_LINE_BYTES)  # bounded: a newline-less flood is split up
        if not raw:
            break
        con.feed(raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\r", ""))
    proc.stdout.close()


def _die_with_parent() -> None:
    """Runs in the QEMU child before exec: SIGKILL it if the Python parent dies unexpectedly."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


"""pytest plugin: run ``kvm_full`` tests where a complete KVM exists.

Markers:
  ``kvm_full``  needs a complete KVM. Runs natively when the host's /dev/kvm is
                complete or when already inside the bed (KVMPY_IN_BED=1). Otherwise
                the selected kvm_full items are run as ONE batch in the nested L1
                bed, booted lazily when the first of them is reached, and each host
                item reports the outcome of its twin inside L1. A bed failure fails
                every kvm_full item with the reason; KVMPY_NO_BED=1 skips them instead.
  ``kvm_host``  needs any /dev/kvm (PVM is enough); skipped when there is none.
  ``bed_pending(why)``  a kvm_full test written but not yet seen passing in the bed: it stays out
                of the batch (skipped, saying why) unless KVMPY_BED_PENDING=1, so the default
                suite only carries complete-KVM tests that are known to pass.

Fixtures of kvm_full tests run inside L1 only (~40x slower than here). Work that is
better done on the host first (building guest images, say) goes in a conftest hook:

    def pytest_kvmpy_bed_prepare(config, items):  # items: the batch's kvm_full items
        ...                                       # runs once, on the host, before the boot

Inside the bed the plugin also records every test report as JSON lines to
$KVMPY_BED_REPORT, which is how outcomes travel back to the host session.

Third-party pytest plugins are not auto-loaded inside the bed (under TCG importing
hypothesis and pytest-benchmark alone costs ~10 s); hypothesispytest and benchmark are
added back when a batched test uses them, others via KVMPY_BED_PYTEST_ARGS="-p NAME".

A wedged L1 (the emulated machine stops making progress: its heartbeat, a shell loop
bumping a file every 10 s, stops for KVMPY_BED_STALL_TIMEOUT seconds; L1's own kernel
reports of soft lockups and RCU stalls do not count as progress) is killed, and the
tests it had not finished are re-run in a fresh L1, at most twice; so are they when L1
dies (its kernel panics, or QEMU crashes), and when the inner session writes no report for
KVMPY_BED_PROGRESS_TIMEOUT seconds (default 900: no test phase takes that long, but a VMM
process that SIGKILL does not end, stuck in L1's kernel, held a batch for an hour). The test
it was running gets a warning that says so. A slow or silent test is not a wedge.

A test that fails because a guest did not do something in time (it raised
kvmpy.api.errors.WaitTimeout, which ExpectTimeout is), or because its guest reset by itself
without a word (GuestVanished: a triple fault under -no-reboot, no panic on the console), is
run once more in a fresh L1 after the batch, when at most KVMPY_BED_TIMEOUT_RETRIES (default 5)
tests failed that way: under the bed's emulated SVM an L2 guest now and then stops running for
minutes, or triple-faults, under QEMU+KVM as much as under kvmpy, and that must not decide the
suite. The retry's outcome is the test's; a warning keeps the first failure, so a flaky hang
stays visible.

Environment: KVMPY_NO_BED=1, KVMPY_BED_TIMEOUT (s, default 3600),
KVMPY_BED_BOOT_TIMEOUT (s, default 300), KVMPY_BED_STALL_TIMEOUT (s, default 120),
KVMPY_BED_PROGRESS_TIMEOUT (s, default 900), KVMPY_BED_KEEP=1 (keep the scratch dir),
KVMPY_BED_PYTEST_ARGS (extra arguments for the inner pytest), KVMPY_BED_TIMEOUT_RETRIES (0
turns the guest-timeout retry off).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

from kvmpy.kvm.flavor import KvmKind, host_kvm_kind

if TYPE_CHECKING:
    from kvmpy.testbed.bed import BedResult

IN_BED_ENV = "KVMPY_IN_BED"  # same value as kvmpy.testbed.bed.IN_BED_ENV; bed.py is imported lazily
REPORT_ENV = "KVMPY_BED_REPORT"
NO_BED_ENV = "KVMPY_NO_BED"
TIMEOUT_ENV = "KVMPY_BED_TIMEOUT"
BOOT_TIMEOUT_ENV = "KVMPY_BED_BOOT_TIMEOUT"
STALL_TIMEOUT_ENV = "KVMPY_BED_STALL_TIMEOUT"
PROGRESS_TIMEOUT_ENV = "KVMPY_BED_PROGRESS_TIMEOUT"
KEEP_ENV = "KVMPY_BED_KEEP"
PYTEST_ARGS_ENV = "KVMPY_BED_PYTEST_ARGS"
PENDING_ENV = "KVMPY_BED_PENDING"
TIMEOUT_RETRIES_ENV = "KVMPY_BED_TIMEOUT_RETRIES"
TIMEOUT_ROUNDS = 2  # fresh L1s a guest-timeout test may get: QEMU's own guest once stopped in two L1s in a row

NATIVE, BED, OFF = "native", "bed", "off"
_OUTPUT_TAIL = 60


class BedHookSpecs:
    """Hooks this plugin adds to pytest."""

    @pytest.hookspec
    def pytest_kvmpy_bed_prepare(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Called on the host once, just before the nested bed boots for ``items``."""


def decide_mode(env: dict[str, str] | os._Environ[str], kind: KvmKind) -> str:
    """Where kvm_full tests run: natively, in the bed, or nowhere (skipped)."""
    if env.get(IN_BED_ENV) == "1" or kind is KvmKind.COMPLETE:
        return NATIVE
    if env.get(NO_BED_ENV) == "1":
        return OFF
    return BED


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise pytest.UsageError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass
class _Batch:
    """The outcome of the one bed run of this session."""

    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # nodeid -> reports
    collect_errors: dict[str, str] = field(default_factory=dict)            # collector nodeid -> text
    error: str | None = None       # the bed itself failed
    returncode: int | None = None  # the inner pytest's exit status
    output_tail: str = ""
    scratch: Path | None = None
    wedged: dict[str, str] = field(default_factory=dict)  # nodeid L1 was running -> why a fresh L1 re-ran it
    timed_out: dict[str, str] = field(default_factory=dict)  # nodeid -> its first guest timeout, re-run after


def _env_count(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    if not raw.isdigit():
        raise pytest.UsageError(f"{name}={raw!r} is not a count (0 or more)")
    return int(raw)


def _guest_timeout(reports: list[dict[str, Any]] | None) -> str | None:
    """The first line of a failure that was a guest timing out, or None."""
    for r in reports or ():
        if r.get("outcome") == "failed" and r.get("guest_timeout"):
            return str(r.get("crash") or "a guest stopped").splitlines()[0][:300]
    return None


def _finished(reports: list[dict[str, Any]] | None) -> bool:
    return bool(reports) and any(r.get("when") == "teardown" for r in reports)


@dataclass
class _BatchRun:
    """Runs a list of kvm_full ids in the bed, replacing a wedged or dead L1 at most twice."""

    plugin: "KvmBedPlugin"
    argv: list[str]
    env: dict[str, str]
    shares: list[Path]
    rootdir: Path
    scratch: Path
    show: Callable[[str], None]  # one line of the batch's output

    def ids(self, ids: list[str], batch: _Batch, label: str) -> "BedResult | None":
        """The BedResult of the run that finished, or None after setting ``batch.error``."""
        from kvmpy.testbed.bed import BedDied, BedError, BedStalled, NestedBed  # lazy: keeps the inner run lean

        say, p = self.plugin.terminal_line, self.plugin
        attempts = 3  # a wedge of the emulated machine is rare; two in a row would be news
        for attempt in range(1, attempts + 1):
            name = label + ("" if attempt == 1 else f"-retry{attempt - 1}")
            report, console = self.scratch / f"reports{name}.jsonl", self.scratch / f"console{name}.log"
            try:
                bed = NestedBed(self.shares, boot_timeout=p.boot_timeout, stall_timeout=p.stall_timeout,
                                progress=lambda: report.stat().st_size if report.exists() else 0,
                                progress_timeout=p.progress_timeout, on_output=self.show)
                res = bed.run(self.argv + ["--", *ids], cwd=self.rootdir, env={**self.env, REPORT_ENV: str(report)},
                              timeout=p.timeout, scratch=self.scratch, console_log=console)
            except BedError as exc:
                # Tests that finished before a timeout or crash keep their real outcome.
                load_reports(report, batch)
                why = str(exc).splitlines()[0]
                unfinished = [i for i in ids if not _finished(batch.reports.get(i))]
                if isinstance(exc, (BedStalled, BedDied)) and attempt < attempts and unfinished:
                    # A wedge or death of the emulated machine, not a test result: a fresh L1 gets the rest.
                    running = next((i for i in unfinished if i in batch.reports), unfinished[0])
                    for i in unfinished:
                        batch.reports.pop(i, None)
                    batch.wedged[running] = why
                    say(f"kvmpy: {why} while running {running}; re-running the "
                        f"{len(unfinished)} unfinished kvm_full test(s) in a fresh L1 (console: {console})")
                    ids = unfinished
                    continue
                batch.error = f"{exc}\n(L1 console log: {console})"
                say(f"kvmpy: the nested bed failed: {why}")
                return None
            load_reports(report, batch)
            return res
        return None  # not reached: the last attempt returns or sets the error


def load_reports(path: Path, batch: _Batch) -> None:
    """Add the inner session's JSON-lines reports at ``path`` (if any) to ``batch``."""
    if not path.exists():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or not isinstance(r.get("nodeid"), str):
            continue
        if r.get("when") == "collect":
            batch.collect_errors[r["nodeid"]] = str(r.get("longrepr", ""))
        elif r.get("when") in ("setup", "call", "teardown") and \
                r.get("outcome") in ("passed", "failed", "skipped"):
            batch.reports.setdefault(r["nodeid"], []).append(r)


class BedTwin(pytest.Item):
    """Stands in on the host for a kvm_full item that runs in the bed.

    It runs through pytest's own protocol, so the collectors it shares with host items
    (module and class fixtures) are set up and finalised as usual, but it has no
    fixtures or body of its own: its setup starts the session's one bed batch, and its
    reports are those of its twin inside L1 (see ``KvmBedPlugin.pytest_runtest_makereport``).
    This replaced a protocol of the plugin's own, which had to call pytest's private
    ``session._setupstate`` to finalise the collectors.
    """

    def __init__(self, *, original: pytest.Item, plugin: "KvmBedPlugin", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original = original
        self.plugin = plugin
        self.user_properties = original.user_properties

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.original.reportinfo()

    def iter_markers_with_node(self, name: str | None = None) -> Iterator[tuple[Any, pytest.Mark]]:
        # The original's marks (skipif, xfail, filterwarnings...) are evaluated inside L1,
        # where their conditions hold; evaluating them here as well would apply them twice.
        return iter(())

    def setup(self) -> None:
        batch = self.plugin.batch_for_session()  # already run: see KvmBedPlugin.pytest_runtest_protocol
        if self.nodeid in batch.wedged:
            self.warn(pytest.PytestWarning(f"the nested L1 VM failed while running this test "
                                           f"({batch.wedged[self.nodeid]}); it was re-run in a fresh L1"))
        if self.nodeid in batch.timed_out:
            self.warn(pytest.PytestWarning(f"a guest stopped (timed out, or reset by itself) in this test's first run "
                                           f"in the bed "
                                           f"({batch.timed_out[self.nodeid]}); the outcome is that of its "
                                           f"re-run in a fresh L1"))

    def runtest(self) -> None:
        """The test ran inside L1; the setup already holds its outcome."""


class KvmBedPlugin:
    """Registered once per session by tests/conftest.py."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.kind = host_kvm_kind()
        self.mode = decide_mode(os.environ, self.kind)
        self.kvm_full_ids: list[str] = []
        self.kvm_full_items: list[pytest.Item] = []
        self.inner_plugins: list[str] = []
        self.batch: _Batch | None = None
        self._report_path = os.environ.get(REPORT_ENV) if os.environ.get(IN_BED_ENV) == "1" else None
        # Read at start-up so a bad value is a usage error, not a failure mid-session.
        self.timeout = _env_seconds(TIMEOUT_ENV, 3600.0)
        self.boot_timeout = _env_seconds(BOOT_TIMEOUT_ENV, 300.0)
        self.stall_timeout = _env_seconds(STALL_TIMEOUT_ENV, 120.0)
        self.progress_timeout = _env_seconds(PROGRESS_TIMEOUT_ENV, 900.0)
        self.timeout_retries = _env_count(TIMEOUT_RETRIES_ENV, 5)
        self._guest_timeouts: set[str] = set()  # inside the bed: nodeids whose guest timed out

    # --- header and selection ------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> str:
        where = {NATIVE: "run natively",
                 BED: "run in the nested L1 bed (one batch per session)",
                 OFF: f"are skipped ({NO_BED_ENV}=1)"}[self.mode]
        inside = " (inside the bed)" if os.environ.get(IN_BED_ENV) == "1" else ""
        return f"kvmpy: host KVM is {self.kind.value}{inside}; kvm_full tests {where}"

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # After -k/-m deselection: only what is selected goes into the batch.
        if os.environ.get(PENDING_ENV) != "1":
            for i in session.items:
                mark = i.get_closest_marker("bed_pending")
                if mark is not None and i.get_closest_marker("kvm_full"):
                    why = mark.args[0] if mark.args else "not yet seen passing in the nested bed"
                    i.add_marker(pytest.mark.skip(reason=f"bed_pending: {why} ({PENDING_ENV}=1 runs it)"))
        items = [i for i in session.items if i.get_closest_marker("kvm_full") and not
                 (i.get_closest_marker("bed_pending") and os.environ.get(PENDING_ENV) != "1")]
        self.kvm_full_items = items
        self.kvm_full_ids = [i.nodeid for i in items]
        self.inner_plugins = sorted(_plugins_needed(items))
        if self.mode == BED:
            batch = set(map(id, items))
            session.items[:] = [BedTwin.from_parent(i.parent, name=i.name, original=i, plugin=self)
                                if id(i) in batch and i.parent is not None else i
                                for i in session.items]

    # --- running -------------------------------------------------------------------------

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.get_closest_marker("kvm_host") and self.kind is KvmKind.MISSING:
            pytest.skip("needs /dev/kvm (missing or not accessible)")
        if item.get_closest_marker("kvm_full"):
            if self.mode == OFF:
                pytest.skip(f"needs a complete KVM; host KVM is {self.kind.value} and the nested "
                            f"bed is disabled by {NO_BED_ENV}=1")
            if self.mode == NATIVE and self.kind is not KvmKind.COMPLETE:
                pytest.fail(f"needs a complete KVM but /dev/kvm here is {self.kind.value} "
                            f"(inside the bed: kvm-amd did not come up?)", pytrace=False)

    def batch_for_session(self) -> _Batch:
        """The session's one bed run, started when the first BedTwin is reached."""
        if self.batch is None:
            self.batch = self._run_batch()
        return self.batch

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        # Between items output is not captured, so the batch's progress lines reach the terminal;
        # pytest's own protocol then runs the twin.
        if isinstance(item, BedTwin):
            self.batch_for_session()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport | None:
        if self._report_path is not None and call.excinfo is not None:
            from kvmpy.api.errors import GuestVanished, WaitTimeout  # lazy: only the inner session needs them
            if call.excinfo.errisinstance((WaitTimeout, GuestVanished)):
                self._guest_timeouts.add(item.nodeid)
        if not isinstance(item, BedTwin) or self.batch is None:
            return None
        host = pytest.TestReport.from_item_and_call(item, call)
        if call.excinfo is not None or (call.when == "teardown" and not host.passed):
            return host  # the host side itself failed (starting the batch, or finalising a collector)
        return self._twin_reports(item.original, self.batch).get(call.when, host)

    def _twin_reports(self, item: pytest.Item, batch: _Batch) -> dict[str, pytest.TestReport]:
        """The inner reports of ``item``'s twin by phase (setup, call, teardown)."""
        def make(when: str, outcome: str, longrepr: Any, duration: float = 0.0,
                 sections: list[tuple[str, str]] | None = None, wasxfail: str | None = None
                 ) -> pytest.TestReport:
            now = time.time()
            rep = pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, outcome,
                                    longrepr, when, sections or [], duration, start=now - duration,
                                    stop=now, user_properties=list(item.user_properties))
            if wasxfail is not None:
                rep.wasxfail = wasxfail  # type: ignore[attr-defined]
            return rep

        inner = batch.reports.get(item.nodeid)
        if not inner and batch.error is not None:
            return {"setup": make("setup", "failed", f"kvm_full test not run: the nested KVM test bed failed:\n"
                                                     f"{batch.error}")}
        if not inner:
            for collector, text in batch.collect_errors.items():
                if item.nodeid.startswith(collector + "::") or item.nodeid == collector:
                    return {"setup": make("setup", "failed",
                                          f"collecting {collector} failed inside the bed:\n{text}")}
            return {"setup": make("setup", "failed",
                                  f"the nested bed reported no result for this test (inner pytest exit status "
                                  f"{batch.returncode}; set {KEEP_ENV}=1 to keep {batch.scratch})\n"
                                  f"--- inner output (tail) ---\n{batch.output_tail}")}
        out: dict[str, pytest.TestReport] = {}
        for r in inner:
            longrepr: Any = r.get("longrepr") or None
            if r["outcome"] == "skipped" and r.get("wasxfail") is None:
                skip = r.get("skip")
                longrepr = (str(skip[0]), int(skip[1]), str(skip[2])) if skip else \
                    (str(item.path), 0, longrepr or "skipped")
            elif r["outcome"] == "failed":
                longrepr = f"[failed inside the nested KVM test bed]\n{longrepr or ''}"
            sections = [(str(a), str(b)) for a, b in r.get("sections", [])]
            out[r["when"]] = make(r["when"], r["outcome"], longrepr, float(r.get("duration", 0.0)),
                                  sections, r.get("wasxfail"))
        if "teardown" not in out and not any(r.failed or r.skipped for r in out.values()):
            why = f"the nested KVM test bed failed:\n{batch.error}" if batch.error else \
                f"the inner pytest stopped (exit status {batch.returncode})"
            phase = "teardown" if "call" in out else "call"
            out[phase] = make(phase, "failed", f"interrupted inside the bed: {why}")
        return out

    # --- the batch -----------------------------------------------------------------------

    def terminal_line(self, text: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(text)

    def _run_batch(self) -> _Batch:
        from kvmpy.testbed.bed import project_root  # lazy: keeps the inner run lean

        batch = _Batch()
        scratch = Path(tempfile.mkdtemp(prefix="kvmpy-bed-session-"))
        batch.scratch = scratch
        rootdir = Path(self.config.rootpath)
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--rootdir", str(rootdir),
                f"--junitxml={scratch / 'bed.xml'}"]
        tw = self.config.get_terminal_writer()
        argv.append(f"--color={'yes' if tw.hasmarkup else 'no'}")  # L1's console is a tty
        if self.config.inipath is not None:
            argv += ["-c", str(self.config.inipath)]
        for name in self.inner_plugins:
            argv += ["-p", name]
        argv += shlex.split(os.environ.get(PYTEST_ARGS_ENV, ""))
        kvmpy_root = project_root()
        shares = [rootdir] + ([kvmpy_root] if kvmpy_root is not None else [])
        pythonpath = [str(Path(__file__).resolve().parents[2])] + \
            ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        env = {"PYTHONPATH": os.pathsep.join(pythonpath), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        if os.environ.get(PENDING_ENV) == "1":
            env[PENDING_ENV] = "1"  # the inner session must not skip what this one batched
        verbosity = self.config.get_verbosity()

        def show(line: str) -> None:
            # -v: the inner per-test result lines; -vv: everything the batch prints.
            if verbosity >= 2 or (verbosity >= 1 and "::" in line and
                                  any(w in line for w in ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"))):
                self.terminal_line(f"  [L1] {line}")
        self.terminal_line(f"kvmpy: host KVM is {self.kind.value}: booting the nested L1 bed for "
                            f"{len(self.kvm_full_ids)} kvm_full test(s) (console: {scratch / 'console.log'})")
        try:
            self.config.hook.pytest_kvmpy_bed_prepare(config=self.config, items=list(self.kvm_full_items))
        except Exception as exc:  # a conftest's preparation failed: every batched test fails with it
            batch.error = f"pytest_kvmpy_bed_prepare failed on the host: {type(exc).__name__}: {exc}"
            self.terminal_line(f"kvmpy: {batch.error}")
            return batch
        run = _BatchRun(self, argv, env, shares, rootdir, scratch, show)
        res = run.ids(list(self.kvm_full_ids), batch, "")
        if res is None:
            return batch
        pending = list(self.kvm_full_ids)
        for rnd in range(TIMEOUT_ROUNDS):
            timed_out = {i: why for i in pending if (why := _guest_timeout(batch.reports.get(i)))}
            if not timed_out or len(timed_out) > self.timeout_retries:
                break
            self.terminal_line(f"kvmpy: a guest stopped (timed out, or reset by itself) {'again ' if rnd else ''}"
                                f"in {len(timed_out)} kvm_full test(s); running "
                                f"{'it' if len(timed_out) == 1 else 'them'} once more in a fresh L1: "
                                + ", ".join(timed_out))
            for i, why in timed_out.items():
                batch.reports.pop(i, None)
                batch.timed_out.setdefault(i, why)  # the first failure is the one the warning keeps
            res = run.ids(list(timed_out), batch, "-timeout-retry" + (str(rnd + 1) if rnd else "")) or res
            pending = list(timed_out)
        batch.returncode = res.returncode
        batch.output_tail = "\n".join(res.output.splitlines()[-_OUTPUT_TAIL:])
        t = res.timings
        self.terminal_line(f"kvmpy: nested bed done: inner pytest exit {res.returncode}; L1 boot "
                            f"{t.boot_s or 0:.1f} s, batch {t.command_s or 0:.1f} s, total {t.total_s:.1f} s")
        return batch

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # The scratch dir is kept only when it can explain a bed failure (or on request);
        # inner test failures are already reported in full by the host session.
        b = self.batch
        if b is None or b.scratch is None or os.environ.get(KEEP_ENV) == "1":
            return
        console = b.scratch / "console.log"
        if (b.error is None and not b.wedged and not b.timed_out) or not console.exists() or console.stat().st_size == 0:
            shutil.rmtree(b.scratch, ignore_errors=True)

    # --- inside the bed: record reports for the host ---------------------------------------

    def _record(self, entry: dict[str, Any]) -> None:
        if self._report_path is None:
            return
        with open(self._report_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._report_path is None:
            return
        entry: dict[str, Any] = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                                 "duration": report.duration, "sections": list(report.sections)}
        if hasattr(report, "wasxfail"):
            entry["wasxfail"] = report.wasxfail
        if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            entry["skip"] = [str(x) for x in report.longrepr[:1]] + [report.longrepr[1], report.longrepr[2]]
        elif report.longrepr is not None:
            entry["longrepr"] = report.longreprtext
        if report.failed and report.nodeid in self._guest_timeouts:
            entry["guest_timeout"] = True
            crash = getattr(report.longrepr, "reprcrash", None)
            entry["crash"] = getattr(crash, "message", "")
        self._record(entry)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if self._report_path is not None and report.failed:
            self._record({"nodeid": report.nodeid, "when": "collect", "outcome": "failed",
                          "longrepr": report.longreprtext})


def _plugins_needed(items: list[pytest.Item]) -> set[str]:
    """Entry-point plugins the batch cannot do without (autoloading is off inside the bed)."""
    names = set()
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            names.add("benchmark")
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            names.add("hypothesispytest")
    return names


def register(config: pytest.Config) -> None:
    """Register the plugin (idempotent); call from a conftest's pytest_configure."""
    if not config.pluginmanager.has_plugin("kvmpy-testbed"):
        config.pluginmanager.add_hookspecs(BedHookSpecs)
        config.pluginmanager.register(KvmBedPlugin(config), "kvmpy-testbed")

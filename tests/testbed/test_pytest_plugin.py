"""The kvm_full/kvm_host plugin, driven through real pytest sessions on a small project."""

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmpy.kvm.flavor import KvmKind, host_kvm_kind
from kvmpy.testbed.pytest_plugin import BED, NATIVE, OFF, decide_mode

ROOT = Path(__file__).resolve().parents[2]
bed_host = pytest.mark.skipif(
    host_kvm_kind() is KvmKind.COMPLETE or os.environ.get("KVMPY_IN_BED") == "1",
    reason="the bed path is only taken when the host KVM is not complete")

PROJECT_TESTS = '''
import os
import pytest

IN_BED = os.environ.get("KVMPY_IN_BED") == "1"
FINALIZED = []

@pytest.fixture(scope="module")
def module_resource():
    yield "r"
    FINALIZED.append("module_resource")

def test_a_first(module_resource):
    # Host-side collectors set up by this item must be finalised across the bed items.
    assert module_resource == "r"

@pytest.mark.kvm_full
def test_passes_only_in_bed():
    assert IN_BED
    # Written on the host by the conftest's pytest_kvmpy_bed_prepare, before L1 booted.
    with open(os.path.join(os.path.dirname(__file__), "prepared.txt")) as fh:
        assert fh.read() == "test_sample.py::test_passes_only_in_bed test_sample.py::test_fails_in_bed"

@pytest.mark.kvm_full
def test_fails_in_bed():
    assert IN_BED and 6 * 7 == 41, "inner failure text"

@pytest.mark.kvm_full
def test_skips_in_bed():
    pytest.skip("skipped inside: " + str(IN_BED))

@pytest.mark.kvm_full
@pytest.mark.xfail(reason="known inner bug")
def test_xfails_in_bed():
    assert not IN_BED

@pytest.mark.kvm_full
def test_deselected():
    assert False

@pytest.mark.kvm_host
def test_on_host():
    assert not IN_BED
'''


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pytest.ini").write_text(textwrap.dedent("""\
        [pytest]
        markers =
            kvm_full: complete KVM
            kvm_host: any KVM
        """))
    (proj / "conftest.py").write_text(textwrap.dedent("""\
        import os
        from kvmpy.testbed.pytest_plugin import register

        def pytest_configure(config):
            register(config)

        def pytest_kvmpy_bed_prepare(config, items):
            assert os.environ.get("KVMPY_IN_BED") != "1"
            with open(os.path.join(str(config.rootpath), "prepared.txt"), "w") as fh:
                fh.write(" ".join(i.nodeid for i in items[:2]))
        """))
    (proj / "test_sample.py").write_text(PROJECT_TESTS)
    (proj / "test_zlast.py").write_text(
        "import test_sample\n\ndef test_zlast():\n"
        "    assert test_sample.FINALIZED == ['module_resource']\n")
    return proj


def _project_of(tmp_path: Path, name: str, tests: str) -> Path:
    """A project whose only tests are ``tests``, in ``name``."""
    proj = _project(tmp_path)
    (proj / "test_sample.py").unlink()
    (proj / "test_zlast.py").unlink()
    (proj / name).write_text(tests)
    return proj


def _pytest(proj: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str],
                                                                               dict[str, tuple[str, str]]]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("KVMPY_IN_BED", "PYTEST_ADDOPTS")}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    xml = proj / "host.xml"
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={xml}",
                          "-rA", *args], cwd=proj, env=full_env, capture_output=True, text=True, timeout=1500)
    outcomes = {}
    for case in ET.parse(xml).iter("testcase"):
        kids = [c for c in case if c.tag in ("failure", "error", "skipped")]
        if kids:
            outcomes[case.get("name", "")] = (kids[0].tag, (kids[0].get("message") or "") + (kids[0].text or ""))
        else:
            outcomes[case.get("name", "")] = ("passed", "")
    return res, outcomes


@pytest.mark.parametrize(("env", "kind", "mode"), [
    ({}, KvmKind.PVM, BED), ({}, KvmKind.MISSING, BED), ({}, KvmKind.COMPLETE, NATIVE),
    ({"KVMPY_IN_BED": "1"}, KvmKind.PVM, NATIVE), ({"KVMPY_NO_BED": "1"}, KvmKind.PVM, OFF),
    ({"KVMPY_NO_BED": "1"}, KvmKind.COMPLETE, NATIVE)])
def test_decide_mode(env: dict[str, str], kind: KvmKind, mode: str) -> None:
    assert decide_mode(env, kind) == mode


@bed_host
def test_opt_out_skips_kvm_full_with_a_reason(tmp_path: Path) -> None:
    res, out = _pytest(_project(tmp_path), "-k", "not deselected", env={"KVMPY_NO_BED": "1"})
    assert res.returncode == 0, res.stdout
    for name in ("test_passes_only_in_bed", "test_fails_in_bed", "test_skips_in_bed", "test_xfails_in_bed"):
        assert out[name][0] == "skipped" and "KVMPY_NO_BED=1" in out[name][1], out[name]
    assert out["test_on_host"] == ("passed", "")
    assert out["test_zlast"] == ("passed", "")


@bed_host
def test_bed_failure_fails_kvm_full_with_the_reason(tmp_path: Path) -> None:
    res, out = _pytest(_project(tmp_path), "-k", "not deselected", env={"KVMPY_BED_QEMU": "/nonexistent/qemu"})
    assert res.returncode == 1
    assert "booting the nested L1 bed for 4 kvm_full test(s)" in res.stdout  # -k respected
    for name in ("test_passes_only_in_bed", "test_fails_in_bed", "test_skips_in_bed", "test_xfails_in_bed"):
        kind, text = out[name]
        assert kind == "error" and "/nonexistent/qemu not found" in text, out[name]
    assert out["test_on_host"] == ("passed", "")


@bed_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_each_item_reports_its_twins_outcome_from_the_bed(tmp_path: Path) -> None:
    res, out = _pytest(_project(tmp_path), "-k", "not deselected")
    assert "booting the nested L1 bed for 4 kvm_full test(s)" in res.stdout, res.stdout
    assert "nested bed done: inner pytest exit 1" in res.stdout, res.stdout
    assert out["test_passes_only_in_bed"] == ("passed", "")
    kind, text = out["test_fails_in_bed"]
    assert kind == "failure" and "inner failure text" in text and "failed inside the nested KVM test bed" in text
    assert out["test_skips_in_bed"][0] == "skipped"
    assert out["test_skips_in_bed"][1].startswith("skipped inside: True")  # message, then path:line
    assert out["test_xfails_in_bed"][0] == "skipped" and "known inner bug" in out["test_xfails_in_bed"][1]
    assert out["test_on_host"] == ("passed", "")
    assert "test_deselected" not in out
    assert res.returncode == 1
    summary = res.stdout.strip().splitlines()[-1]
    assert out["test_a_first"] == out["test_zlast"] == ("passed", "")
    for part in ("1 failed", "4 passed", "1 skipped", "1 xfailed", "1 deselected"):
        assert part in summary, summary
    print(next(line for line in res.stdout.splitlines() if "nested bed done" in line))


WEDGE_ONCE = """
import os, time
import pytest

@pytest.mark.kvm_full
def test_done_before_the_wedge():
    pass

@pytest.mark.kvm_full
def test_wedges_the_first_l1():
    flag = os.path.join(os.path.dirname(__file__), "wedged-once")
    if not os.path.exists(flag):
        open(flag, "w").close()
        # Stop L1's heartbeat, as a hung emulated machine would, then hang.
        ctl = os.path.dirname(os.environ["KVMPY_BED_REPORT"])
        with open(os.path.join(ctl, "heartbeat.pid")) as fh:
            os.kill(int(fh.read()), 19)  # SIGSTOP
        time.sleep(600)

@pytest.mark.kvm_full
def test_crashes_the_second_l1():
    flag = os.path.join(os.path.dirname(__file__), "crashed-once")
    if not os.path.exists(flag):
        open(flag, "w").close()
        with open("/proc/sysrq-trigger", "w") as fh:  # L1's kernel panics; QEMU exits (-no-reboot)
            fh.write("c")
        time.sleep(600)

@pytest.mark.kvm_full
def test_after_the_wedge():
    pass
"""


@bed_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_a_wedged_or_dead_l1_is_replaced_and_the_unfinished_tests_rerun(tmp_path: Path) -> None:
    proj = _project_of(tmp_path, "test_wedge.py", WEDGE_ONCE)
    res, out = _pytest(proj, "-v", env={"KVMPY_BED_STALL_TIMEOUT": "20"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert out == {name: ("passed", "") for name in
                   ("test_done_before_the_wedge", "test_wedges_the_first_l1", "test_crashes_the_second_l1",
                    "test_after_the_wedge")}
    assert "while running test_wedge.py::test_wedges_the_first_l1; re-running the 3 unfinished" in res.stdout
    assert "while running test_wedge.py::test_crashes_the_second_l1; re-running the 2 unfinished" in res.stdout
    # the warning summary names what happened to each
    assert "the nested L1 VM failed while running this test (L1's heartbeat stopped" in res.stdout
    assert "the nested L1 VM failed while running this test (L1 died while running the command" in res.stdout


def test_bad_timeout_is_a_usage_error(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "KVMPY_IN_BED"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q"], cwd=proj,
                         env={**env, "PYTHONPATH": str(ROOT), "KVMPY_BED_TIMEOUT": "soon"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "KVMPY_BED_TIMEOUT='soon' is not a number of seconds" in res.stderr


GUEST_TIMEOUTS = """
import os
import pytest
from kvmpy.api.errors import ExpectTimeout, GuestVanished, WaitTimeout

def _run_number(name):
    flag = os.path.join(os.path.dirname(__file__), name)
    n = (int(open(flag).read()) if os.path.exists(flag) else 0) + 1
    with open(flag, "w") as f:
        f.write(str(n))
    return n

def _first_time(name):
    return _run_number(name) == 1

@pytest.mark.kvm_full
def test_guest_stalls_in_the_first_l1_only():
    if _first_time("stalled-once"):
        raise ExpectTimeout("no 'login:' within 300 s", "[    0.25] BIO")

@pytest.mark.kvm_full
def test_guest_resets_in_the_first_l1_only():
    if _first_time("reset-once"):
        raise GuestVanished("the VM has exited (status 0): the guest triple-faulted", "[    3.1] ata1")

@pytest.mark.kvm_full
def test_guest_stalls_in_two_l1s():
    if _run_number("stalled-twice") <= 2:
        raise ExpectTimeout("no 'login:' within 300 s", "[    0.25] BIO")

@pytest.mark.kvm_full
def test_guest_never_ends():
    raise WaitTimeout(f"the guest is still running: run {_run_number('never-runs')}")

@pytest.mark.kvm_full
def test_wrong_answer_is_not_retried():
    assert not _first_time("wrong-once"), "a plain failure"
"""


@bed_host
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_a_guest_timeout_is_run_once_more_in_a_fresh_l1(tmp_path: Path) -> None:
    proj = _project_of(tmp_path, "test_timeouts.py", GUEST_TIMEOUTS)
    res, out = _pytest(proj, "-v")
    assert res.returncode == 1, res.stdout + res.stderr
    assert out["test_guest_stalls_in_the_first_l1_only"] == ("passed", ""), out
    assert out["test_guest_resets_in_the_first_l1_only"] == ("passed", ""), out
    assert out["test_guest_stalls_in_two_l1s"] == ("passed", ""), out
    kind, text = out["test_guest_never_ends"]
    assert kind == "failure" and "the guest is still running: run 3" in text, out  # the last retry's failure
    kind, text = out["test_wrong_answer_is_not_retried"]
    assert kind == "failure" and "a plain failure" in text, out  # ran once: a retry would have passed
    assert ("a guest stopped (timed out, or reset by itself) in 4 kvm_full test(s); running them once more in "
            "a fresh L1: test_timeouts.py::test_guest_stalls_in_the_first_l1_only, "
            "test_timeouts.py::test_guest_resets_in_the_first_l1_only, test_timeouts.py::test_guest_stalls_in_two_l1s, "
            "test_timeouts.py::test_guest_never_ends") in res.stdout, res.stdout
    assert ("a guest stopped (timed out, or reset by itself) again in 2 kvm_full test(s); running them once more "
            "in a fresh L1: test_timeouts.py::test_guest_stalls_in_two_l1s, test_timeouts.py::test_guest_never_ends"
            ) in res.stdout, res.stdout
    assert ("a guest stopped (timed out, or reset by itself) in this test's first run in the bed "
            "(kvmpy.api.errors.ExpectTimeout: no 'login:'") in res.stdout, res.stdout
    # KVMPY_BED_TIMEOUT_RETRIES=0: no second L1
    for flag in ("stalled-once", "reset-once", "stalled-twice", "never-runs", "wrong-once"):
        (proj / flag).unlink()
    res, out = _pytest(proj, "-v", env={"KVMPY_BED_TIMEOUT_RETRIES": "0"})
    assert "once more in a fresh L1" not in res.stdout and out["test_guest_stalls_in_the_first_l1_only"][0] == \
        "failure", res.stdout

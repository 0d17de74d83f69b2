"""The `python -m kvmpy.testbed` CLI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "kvmpy.testbed", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_help() -> None:
    res = _cli("--help")
    assert res.returncode == 0 and "-- CMD" in res.stdout and "KVMPY_CACHE" in res.stdout


@pytest.mark.parametrize("args", [(), ("--",), ("--env", "NOEQUALS", "--", "true"),
                                  ("--timeout", "0", "--", "true"), ("--cwd", "/nonexistent", "--", "true")])
def test_usage_errors_exit_2_without_traceback(args: tuple[str, ...]) -> None:
    res = _cli(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("python -m kvmpy.testbed: error:")


def test_bed_failure_exits_125_with_one_error_line() -> None:
    res = _cli("-q", "--", "true", env={"KVMPY_BED_QEMU": "/nonexistent/qemu"})
    assert res.returncode == 125 and "Traceback" not in res.stderr
    assert res.stderr.strip() == ("kvmpy-bed: error: /nonexistent/qemu not found: "
                                  "install the Debian package qemu-system-x86")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
@pytest.mark.skipif(os.environ.get("KVMPY_IN_BED") == "1", reason="no TCG inside the TCG bed")
def test_command_output_and_status(tmp_path: Path) -> None:
    res = _cli("--", "sh", "-c", 'echo "in $(pwd) kvm:$(ls /dev/kvm)" && exit 3', cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    assert res.stdout == f"in {tmp_path} kvm:/dev/kvm\n"
    assert "kvmpy-bed: exit 3; boot" in res.stderr

"""QMP snapshot-save / snapshot-load / snapshot-delete jobs, query-jobs, job-dismiss and HMP savevm & co.,
run as one script against qemu-system-x86_64 and against kvmpy: replies, errors and events must match.

Both start paused (-S), with one qcow2 disk as a -blockdev node and a raw one in the second run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.guests.build import build_guest
from tests.guests.runner import REPO

pytestmark = [pytest.mark.kvm_host,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")]

FLAGS = ["-enable-kvm", "-m", "32", "-display", "none", "-nodefaults", "-serial", "none", "-S"]

SCRIPT: list[dict[str, Any]] = [
    {"execute": "snapshot-save", "arguments": {"job-id": "j1", "tag": "t1", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "query-jobs"},
    {"execute": "snapshot-save", "arguments": {"job-id": "j1", "tag": "t1", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "job-dismiss", "arguments": {"id": "j1"}},
    {"execute": "job-dismiss", "arguments": {"id": "j1"}},
    {"execute": "snapshot-save", "arguments": {"job-id": "j2", "tag": "t1", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "snapshot-load", "arguments": {"job-id": "j3", "tag": "t1", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "snapshot-load", "arguments": {"job-id": "j4", "tag": "zz", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "snapshot-save", "arguments": {"job-id": "j5", "tag": "t2", "vmstate": "nope", "devices": ["fmt0"]}},
    {"execute": "snapshot-save", "arguments": {"job-id": "j6", "tag": "t2", "vmstate": "fmt0", "devices": ["nope"]}},
    {"execute": "snapshot-save", "arguments": {"job-id": "j7", "tag": "t2", "vmstate": "fmt0", "devices": []}},
    {"execute": "human-monitor-command", "arguments": {"command-line": "savevm hm"}},
    {"execute": "human-monitor-command", "arguments": {"command-line": "savevm hm"}},  # HMP overwrites
    {"execute": "snapshot-delete", "arguments": {"job-id": "j8", "tag": "t1", "devices": ["fmt0"]}},
    {"execute": "snapshot-delete", "arguments": {"job-id": "j9", "tag": "t1", "devices": ["fmt0"]}},
    {"execute": "job-dismiss", "arguments": {"id": "j9"}},
    {"execute": "snapshot-save", "arguments": {"job-id": "1bad", "tag": "t2", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "snapshot-save", "arguments": {"job-id": "j10", "tag": "t2"}},
    {"execute": "query-jobs"},
    {"execute": "human-monitor-command", "arguments": {"command-line": "delvm hm"}},
    {"execute": "human-monitor-command", "arguments": {"command-line": "info snapshots"}},
]

RAW_SCRIPT: list[dict[str, Any]] = [
    {"execute": "snapshot-save", "arguments": {"job-id": "r1", "tag": "t", "vmstate": "fmt0",
                                               "devices": ["fmt0", "raw0"]}},
    {"execute": "snapshot-save", "arguments": {"job-id": "r2", "tag": "t", "vmstate": "raw0", "devices": ["fmt0"]}},
    {"execute": "snapshot-save", "arguments": {"job-id": "r3", "tag": "t", "vmstate": "fmt0", "devices": ["fmt0"]}},
    {"execute": "snapshot-delete", "arguments": {"job-id": "r4", "tag": "t", "devices": ["raw0"]}},
    {"execute": "query-jobs"},
    {"execute": "human-monitor-command", "arguments": {"command-line": "savevm x"}},
    {"execute": "human-monitor-command", "arguments": {"command-line": "loadvm t"}},
    {"execute": "human-monitor-command", "arguments": {"command-line": "delvm t"}},
    {"execute": "human-monitor-command", "arguments": {"command-line": "info snapshots"}},
]


class Client:
    def __init__(self, path: Path) -> None:
        end = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(30)
        self.file = self.sock.makefile("rw")
        self.read()
        self.send({"execute": "qmp_capabilities"})
        assert self.read() == {"return": {}}

    def send(self, msg: dict[str, Any]) -> None:
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()

    def read(self) -> dict[str, Any]:
        msg = json.loads(self.file.readline())
        msg.pop("timestamp", None)
        return msg

    def run(self, msg: dict[str, Any]) -> tuple[Any, list, list]:
        """(reply, job events in order, other events in order) up to the end of the job it started."""
        self.send(msg)
        reply, jobs, other = None, [], []
        job = msg.get("arguments", {}).get("job-id") if msg["execute"].startswith("snapshot-") else None
        while True:
            m = self.read()
            if "event" not in m:
                reply = m
                if "error" in m or job is None:
                    return reply, jobs, other
            elif m["event"] == "JOB_STATUS_CHANGE":
                jobs.append(m["data"])
            else:
                other.append(m["event"])
            if reply is not None and jobs and jobs[-1] == {"status": "concluded", "id": job}:
                return reply, jobs, other


def run_script(argv: list[str], sock: Path, script: list[dict[str, Any]]) -> list:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*argv, "-qmp", f"unix:{sock},server=on,wait=off"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        c = Client(sock)
        out = [c.run(m) for m in script]
        c.send({"execute": "quit"})
        proc.wait(30)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _both(tmp: Path, script: list[dict[str, Any]], raw: bool) -> tuple[list, list]:
    results = {}
    for who, vmm in [("qemu", ["qemu-system-x86_64"]), ("kvmpy", [sys.executable, "-m", "kvmpy"])]:
        disk = tmp / f"{who}.qcow2"
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "16M"], check=True, capture_output=True)
        args = [*vmm, *FLAGS, "-kernel", str(build_guest("counter")),
                "-blockdev", f"driver=file,filename={disk},node-name=file0",
                "-blockdev", "driver=qcow2,file=file0,node-name=fmt0", "-device", "virtio-blk-pci,drive=fmt0"]
        if raw:
            rimg = tmp / f"{who}.raw"
            rimg.write_bytes(bytes(1 << 20))
            args += ["-blockdev", f"driver=file,filename={rimg},node-name=rawf",
                     "-blockdev", "driver=raw,file=rawf,node-name=raw0", "-device", "virtio-blk-pci,drive=raw0"]
        results[who] = run_script(args, tmp / f"{who}.sock", script)
        assert "No errors were found" in subprocess.run(["qemu-img", "check", str(disk)], capture_output=True,
                                                        text=True).stdout
    return results["qemu"], results["kvmpy"]


def _same_table(q: str, k: str) -> None:
    """HMP tables: the same lines except the date and VM clock and the VM size (a different state format)."""
    ql, kl = q.split("\r\n"), k.split("\r\n")
    assert len(ql) == len(kl), (q, k)
    for a, b in zip(ql, kl):
        if a.startswith(("--", "1 ", "2 ", "3 ", "4 ")):
            assert a.split()[:2] == b.split()[:2] and len(a.split()) == len(b.split()), (a, b)
        else:
            assert a == b


def test_snapshot_jobs_match_qemu(short_tmp: Path) -> None:
    q, k = _both(short_tmp, SCRIPT, raw=False)
    for msg, qr, kr in zip(SCRIPT, q, k):
        if msg["execute"] == "human-monitor-command" and "info" in msg["arguments"]["command-line"]:
            assert qr[1:] == kr[1:]
            _same_table(qr[0]["return"], kr[0]["return"])
        else:
            assert qr == kr, msg


def test_raw_disk_refusals_match_qemu(short_tmp: Path) -> None:
    q, k = _both(short_tmp, RAW_SCRIPT, raw=True)
    for msg, qr, kr in zip(RAW_SCRIPT, q, k):
        if msg["execute"] == "human-monitor-command" and "info" in msg["arguments"]["command-line"]:
            _same_table(qr[0]["return"], kr[0]["return"])
        else:
            assert qr == kr, msg


def _counter(c: Client) -> int:
    reply, _, _ = c.run({"execute": "human-monitor-command", "arguments": {"command-line": "xp /1xw 0x200000"}})
    return int(reply["return"].split(":")[1], 16)


def test_loadvm_option_starts_from_the_snapshot(short_tmp: Path) -> None:
    """`kvmpy -loadvm TAG`: the counter guest starts where savevm left it; a missing tag ends the start
    with QEMU's message and status 1."""
    disk = short_tmp / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(disk), "16M"], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = [sys.executable, "-m", "kvmpy", *[f for f in FLAGS if f != "-S"], "-kernel", str(build_guest("counter")),
            "-drive", f"file={disk},if=virtio"]
    sock = short_tmp / "a.sock"
    proc = subprocess.Popen([*base, "-qmp", f"unix:{sock},server=on,wait=off"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = Client(sock)
        deadline = time.monotonic() + 30
        while _counter(c) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.run({"execute": "stop"})
        saved = _counter(c)
        assert saved >= 1000
        assert c.run({"execute": "human-monitor-command", "arguments": {"command-line": "savevm s1"}})[0] == \
            {"return": ""}
        c.send({"execute": "quit"})
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sock = short_tmp / "b.sock"
    proc = subprocess.Popen([*base, "-loadvm", "s1", "-S", "-qmp", f"unix:{sock},server=on,wait=off"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = Client(sock)
        assert _counter(c) == saved  # RAM as saved, before any vCPU ran
        c.run({"execute": "cont"})
        deadline = time.monotonic() + 30
        while _counter(c) <= saved and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _counter(c) > saved  # and the vCPU carries on counting from there
        c.send({"execute": "quit"})
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = subprocess.run([*base, "-loadvm", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert (bad.returncode, bad.stderr) == (1, "kvmpy: Snapshot 'nope' does not exist in one or more devices\n")
    q = subprocess.run(["qemu-system-x86_64", *[f for f in FLAGS if f != "-S"], "-drive", f"file={disk},if=virtio",
                        "-loadvm", "nope"], capture_output=True, text=True, timeout=60)
    last = q.stderr.splitlines()[-1]  # after QEMU's CPUID warnings on this host
    assert (q.returncode, last.split(": ", 1)[1]) == (1, bad.stderr.strip().split(": ", 1)[1])

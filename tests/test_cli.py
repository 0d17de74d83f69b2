"""The kvmpy command: QEMU flags map onto the config; user mistakes are one line and status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpy.cli import HelpRequested, main, parse_qemu_args
from kvmpy.config import BOARDS, ConfigError
from tests.guests.build import build_guest
from tests.guests.runner import BASE_FLAGS, PASS, run_cli

MiB = 1 << 20


def test_qemu_flags_become_a_config(tmp_path: Path) -> None:
    cfg = parse_qemu_args(["-enable-kvm", "-m", "512", "-smp", "cpus=2,sockets=1", "-kernel", "k", "-append",
                           "a b", "-nographic", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                           "-name", "guest=vm1", "-S"])
    assert (cfg.memory, cfg.smp, str(cfg.kernel), cfg.append, cfg.serial) == (512 * MiB, 2, "k", "a b", "stdio")
    assert cfg.no_reboot and cfg.start_paused and cfg.name == "vm1"
    assert (cfg.debug_exit.iobase, cfg.debug_exit.iosize) == (0xF4, 4)
    assert parse_qemu_args(["-accel", "kvm", "-nodefaults", "-kernel", "k"]).serial == "none"
    assert parse_qemu_args(["-accel", "kvm", "-display", "none", "-kernel", "k"]).serial == "stdio"
    riscv = parse_qemu_args(["-machine", "virt", "-cpu", "rv64", "-bios", "none", "-kernel", "p", "-m", "128M"])
    assert (riscv.arch, riscv.machine, riscv.accel, riscv.bios) == ("riscv64", "virt", "tcg", "none")
    assert riscv.tcg_tier == ""           # the board's default tier
    for tier in ("py", "native"):
        assert parse_qemu_args(["-M", "virt", "-accel", f"tcg,tier={tier}", "-kernel", "p"]).tcg_tier == tier
    traced = parse_qemu_args(["-M", "virt", "-kernel", "p", "-d", "in_asm,exec", "-D", "t.log"])
    assert (traced.trace, traced.trace_file) == ({"in_asm", "exec"}, Path("t.log"))
    assert parse_qemu_args(["-enable-kvm", "-M", "q35", "-kernel", "k"]).machine == "pc"


@pytest.mark.parametrize("argv, message", [
    (["-enable-kvm", "-usb"], "unsupported option '-usb'"),
    (["-enable-kvm", "-m"], "needs an argument"),
    (["-enable-kvm", "-m", "huge"], "invalid memory size"),
    (["-kernel", "k"], "x86 guests need KVM"),
    (["-enable-kvm", "-device", "e1000"], "unsupported device 'e1000'"),
    (["-enable-kvm", "-display", "gtk"], "no display"),
    (["-enable-kvm", "-machine", "sun4m"], "machine type"),
    (["-enable-kvm", "-m", "1G,slots"], "Expected '=' after parameter 'slots'"),
    (["-enable-kvm", "-m", "1G,foo=1"], "Invalid parameter 'foo'"),
    (["-M", "virt", "-accel", "kvm,tier=py", "-kernel", "p"], "tier= is a TCG option"),
])
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_qemu_args(argv)


@pytest.mark.parametrize("argv, message", [
    (["-enable-kvm", "-kernel", "/nonexistent/k"], "does not exist"),
    (["-enable-kvm", "-usb"], "unsupported option"),
    (["run", "/nonexistent.yaml"], "cannot read machine file"),
    (["-enable-kvm", "-smp", "0", "-kernel", "/etc/hostname"], "-smp"),
])
def test_main_prints_one_line_and_exits_2(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["-machine", "virt", "-kernel", "/etc/hostname", "-initrd", "/etc/hostname"],
     "machine 'virt' (riscv64) does not support -initrd"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "-S"], "does not support -S"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "-device", "isa-debug-exit"], "does not support -device"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "-qmp", "unix:/tmp/q,server"], "does not support -qmp"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "-d", "guest_errors"], "does not honour -d guest_errors"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "-cpu", "host"], "-cpu 'host' is not supported"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "-bios", "nope.bin"],
     "Unable to load the RISC-V firmware 'nope.bin'"),
    (["-machine", "virt", "-bios", "none", "-kernel", "/etc/hostname"], "not an ELF"),
    (["-enable-kvm", "-kernel", "/etc/hostname", "-d", "in_asm"], "machine 'pc' honours no -d items"),
    (["-enable-kvm", "-kernel", "/etc/hostname", "-d", "in_asm,warp"], "unknown -d item(s): 'warp'"),
    (["-enable-kvm", "-kernel", "/etc/hostname", "-bios", "nope.bin"], "could not find BIOS image 'nope.bin'"),
    # -m's hotplug options follow QEMU's own rules (the pc board hotplugs memory: kvmpy.boards.pc_memhp)
    (["-enable-kvm", "-kernel", "/etc/hostname", "-m", "1G,slots=4"], "slots specified but no max-size"),
    (["-enable-kvm", "-kernel", "/etc/hostname", "-m", "1G,slots=4"], "slots specified but no max-size"),
    (["-enable-kvm", "-kernel", "/etc/hostname", "-m", "1G,slots=4,maxmem=512M"], "must be at least the initial"),
    (["-enable-kvm", "-kernel", "/etc/hostname", "-m", "1G,slots=300,maxmem=4G"], "memory slots: 300"),
    # a bare argument is a disk image, as in QEMU: it must exist; the riscv virt board has no IDE
    (["-enable-kvm", "-kernel", "/etc/hostname", "stray"], "stray: Could not open 'stray'"),
    (["-machine", "virt", "-kernel", "/etc/hostname", "/etc/hostname"], "IDE is not supported yet; use if=virtio"),
])
def test_each_board_refuses_what_it_lacks_in_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("smp", ["0", "9", "513"])
def test_virt_smp_out_of_range_is_one_line_and_status_2_like_every_config_error(smp: str, capsys) -> None:
    assert main(["-machine", "virt", "-kernel", "/etc/hostname", "-smp", smp]) == 2
    err = capsys.readouterr().err
    assert err == f"kvmpy: error: invalid -smp {smp} (1 to 8)\n"


def test_virt_max_smp_is_the_boards_limit() -> None:
    from kvmpy.boards.riscv_virt import MAX_HARTS
    assert BOARDS["virt"].max_smp == MAX_HARTS


def test_help_and_version(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "-enable-kvm" in out
    for flag in ("-device DRIVER", "-drive file=", "-blockdev", "-netdev", "-chardev", "-object", "-hda", "-cdrom",
                 "slots=N,maxmem=SIZE", "chardev:ID"):
        assert flag in out, flag
    assert main(["-version"]) == 0
    assert "kvmpy version" in capsys.readouterr().out
    assert main([]) == 2


def test_not_a_kernel_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 9000)
    p = run_cli(["-enable-kvm", "-kernel", str(junk)])
    assert p.returncode == 2
    assert b"no multiboot header" in p.stderr and b"Traceback" not in p.stderr


@pytest.mark.kvm_host
def test_cli_runs_a_guest_with_qemu_flags() -> None:
    p = run_cli(["-enable-kvm", "-m", "64", *BASE_FLAGS, "-kernel", str(build_guest("hello")), "-append", "x=1"])
    assert p.returncode == PASS, p.stderr
    assert p.stdout.startswith(b"hello from kvmpy test guest\n")


@pytest.mark.kvm_host
def test_cli_serial_file_and_stdin_input(tmp_path: Path) -> None:
    out = tmp_path / "serial.txt"
    p = run_cli(["-enable-kvm", "-m", "64", "-display", "none", "-no-reboot", "-serial", f"file:{out}",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(build_guest("hello"))])
    assert p.returncode == PASS and p.stdout == b""
    assert out.read_text().startswith("hello from kvmpy test guest")


@pytest.mark.kvm_host
def test_yaml_run_of_the_demo(tmp_path: Path) -> None:
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(f"memory: 64M\nkernel: {build_guest('demo')}\nserial: stdio\nno_reboot: true\n"
                   "devices:\n  - {type: isa-debug-exit, iobase: 0xf4, iosize: 4}\n")
    p = run_cli(["run", str(cfg)])
    assert p.returncode == 0, p.stderr  # the demo resets; no_reboot turns that into exit 0
    assert b"done: resetting through the i8042" in p.stdout


def test_riscv_guest_through_the_qemu_flags_and_yaml(tmp_path: Path) -> None:
    from tests.guests.riscv.build import build_guest as build_riscv

    try:
        elf = build_riscv("hello")
    except Exception as exc:  # no cross compiler on this machine
        pytest.skip(f"cannot build the riscv64 guest: {exc}")
    p = run_cli(["-machine", "virt", "-cpu", "rv64", "-bios", "none", "-nographic", "-m", "128M",
                 "-kernel", str(elf)])
    assert (p.returncode, p.stdout) == (0, b"hello from riscv64\n"), p.stderr
    cfg = tmp_path / "rv.yaml"
    cfg.write_text(f"arch: riscv64\naccel: tcg\nmemory: 128M\nbios: none\nkernel: {elf}\n")
    p = run_cli(["run", str(cfg)])
    assert (p.returncode, p.stdout) == (0, b"hello from riscv64\n"), p.stderr
    p = run_cli(["-enable-kvm", "-machine", "virt", "-kernel", str(elf)])
    assert p.returncode == 2 and b"TCG fallback" in p.stderr


# ---- hostile command lines (issue 11): one line and status 2 (or QEMU's status 1), never a traceback ---------
def one_error_line(p, status: int = 2) -> str:
    err = p.stderr.decode(errors="replace")
    assert p.returncode == status, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_memory_with_hundreds_of_digits() -> None:
    for size in ("9" * 300, "9" * 5000 + "G", "1" * 400 + ".5M"):
        assert "too large" in one_error_line(run_cli(["-enable-kvm", "-m", size, "-kernel", "/etc/hostname"]))


@pytest.mark.kvm_host
def test_memory_the_host_cannot_reserve_is_qemus_one_line_and_status_1() -> None:
    import resource
    import subprocess
    import sys

    def limit() -> None:  # the same refusal on any host: cap the address space below the request
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    p = subprocess.run([sys.executable, "-m", "kvmpy", "-enable-kvm", "-m", "100G", *BASE_FLAGS, "-kernel",
                        str(build_guest("hello"))], capture_output=True, timeout=120, preexec_fn=limit)
    err = one_error_line(p, status=1)
    assert "cannot set up guest memory 'pc.ram': Cannot allocate memory" in err


@pytest.mark.parametrize("size", [0, 1, 4, 11])
def test_kernel_of_a_few_bytes(tmp_path: Path, size: int) -> None:
    k = tmp_path / "k"
    k.write_bytes(b"\0" * size)
    assert "not a kernel" in one_error_line(run_cli(["-enable-kvm", "-kernel", str(k)]))


def test_path_component_longer_than_255_bytes(tmp_path: Path) -> None:
    long = str(tmp_path / ("x" * 300))
    assert "File name too long" in one_error_line(run_cli(["-enable-kvm", "-kernel", long]))
    assert "File name too long" in one_error_line(run_cli(["-enable-kvm", "-kernel", "/etc/hostname",
                                                            "-initrd", long]))


@pytest.mark.kvm_host
@pytest.mark.parametrize("flag, value", [("-qmp", "tcp:é..:4444,server"), ("-incoming", "tcp:é..:4444"),
                                         ("-incoming", "tcp:h:" + "9" * 5000), ("-qmp", "tcp:h:" + "9" * 5000 + ",server")],
                         ids=["qmp-host", "incoming-host", "incoming-port", "qmp-port"])
def test_non_ascii_hosts_and_huge_ports(flag: str, value: str) -> None:
    err = one_error_line(run_cli(["-enable-kvm", "-m", "64", *BASE_FLAGS, "-kernel", str(build_guest("hello")),
                                  flag, value]))
    assert "invalid" in err or "host name" in err


def test_machine_file_that_never_ends(tmp_path: Path) -> None:
    assert "not a regular file" in one_error_line(run_cli(["run", "/dev/zero"], timeout=30))


def test_values_with_newlines_are_echoed_on_one_line(tmp_path: Path) -> None:
    for argv in (["-enable-kvm", "-display", "gtk\nsecond line"], ["-enable-kvm", "-device", "a\nb"],
                 ["-enable-kvm", "-serial", "tcp:a\nb", "-kernel", "/etc/hostname"],
                 ["-enable-kvm", "-qmp", "unix:/tmp/x\ny", "-kernel", "/etc/hostname"]):
        one_error_line(run_cli(argv))
    cfg = tmp_path / "m.yaml"
    cfg.write_bytes(b"kernel: /etc/hostname\nname: \"a\\x01\"\n\x01")
    assert "invalid YAML" in one_error_line(run_cli(["run", str(cfg)]))


# ---- fuzzing the command itself (issue 11, D): generated argvs and machine files through `python3 -m kvmpy` ----
import os as _os
import resource as _resource
import subprocess as _subprocess
import sys as _sys

from hypothesis import HealthCheck, given, settings, strategies as st

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
_HUGE = st.integers(300, 6000).map(lambda n: "9" * n)
_HOSTS = st.sampled_from(["é..", "é", "a..b", "ü.example", "xn--", "-", "[::1", "1.2.3.4.5", "h" * 300, "ſ", "\u200b"])
_VALUE = st.one_of(
    _TEXT, _HUGE, _HUGE.map(lambda d: d + "G"), _HUGE.map(lambda d: "0x" + d),
    st.builds(lambda h, p: f"tcp:{h}:{p}", _HOSTS | _TEXT, st.sampled_from(["4444", "1", "", "9" * 5000, "٣"])),
    st.builds(lambda h, p: f"tcp:{h}:{p},server,wait=off", _HOSTS | _TEXT, st.sampled_from(["0", "9" * 500, "x"])),
    st.sampled_from(["user,id=n0", "virtio-net-pci,netdev=n0", "file=/etc/hostname,if=virtio", "null,id=c0",
                     "socket,id=c0,path=/tmp/s,server=on,wait=off", "driver=raw,node-name=a,file.driver=file",
                     '{"driver": "file", "node-name": "f", "filename": "/etc/hostname"}', "help", "?", "a,,b,,",
                     "rng-random,id=r0", "virtio-blk,drive=virtio0", "1G,slots=4,maxmem=8G", "chardev:c0"]),
    st.sampled_from(["unix:/tmp/\u00e9\u00e9,server,wait=off", "isa-debug-exit,iobase=" + "1" * 5000,
                     "isa-debug-exit,iosize=0x" + "f" * 5000, "1T", "100G", "file:/dev/full", "virt", "pc",
                     "cpus=" + "9" * 5000, "size=" + "9" * 400, "x" * 300]),
)
_OPTS = ["-m", "-smp", "-kernel", "-initrd", "-qmp", "-incoming", "-device", "-machine", "-serial", "-name",
         "-append", "-accel", "-d", "-D", "-cpu", "-display", "-bios", "-drive", "-blockdev", "-netdev", "-chardev",
         "-object", "-hda", "-cdrom", "-nic"]
_ARGV = st.lists(st.one_of(st.sampled_from(_OPTS).flatmap(lambda o: _VALUE.map(lambda v: [o, v])),
                           st.sampled_from([["-enable-kvm"], ["-nodefaults"], ["-no-reboot"], ["-S"], ["--"],
                                            ["-kernel", "/etc/hostname"], ["-kernel", "x" * 300]])),
                 max_size=6).map(lambda parts: [a for p in parts for a in p])


def _limits() -> None:  # bounded memory for the child: a memory bomb fails instead of swapping the host
    _resource.setrlimit(_resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _run_bounded(args: list[str]) -> _subprocess.CompletedProcess:
    env = dict(_os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return _subprocess.run([_sys.executable, "-m", "kvmpy", *args], stdin=_subprocess.DEVNULL, capture_output=True,
                           timeout=60, env=env, preexec_fn=_limits)


def _check_outcome(p: _subprocess.CompletedProcess) -> None:
    err = p.stderr.decode(errors="replace")
    assert p.returncode in (0, 1, 2), (p.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    if p.returncode == 2:
        assert err.count("\n") == 1 and err.endswith("\n"), err[-2000:]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_ARGV)
def test_fuzzed_argv_is_status_0_1_or_2_and_one_line_for_usage_errors(argv: list[str]) -> None:
    # Without -kernel a pc boots SeaBIOS and runs for ever, as QEMU does; a BIOS that cannot load keeps
    # every fuzzed command bounded (the BIOS is checked after everything else, so no other error is hidden).
    _check_outcome(_run_bounded(["-enable-kvm", "-bios", "/dev/null", *argv]))


_YAML_SCALAR = st.one_of(_TEXT, _HUGE, _HUGE.map(lambda d: "'" + d + "M'"), st.integers(-5, 5).map(str),
                         _HOSTS.map(lambda h: f"tcp:{h}:4444,server,wait=off"),
                         st.sampled_from(["~nouser-kvmpy/x", '"a\\0b"', "*a", "[*a, *a, *a, *a]", "&a [1, 2]",
                                          "{type: isa-debug-exit, iosize: *a}", "!!python/object:os.system x"]))
_YAML_KEYS = st.sampled_from(["name", "memory", "smp", "kernel", "initrd", "qmp", "trace", "devices", "serial",
                              "append", "no_reboot", "unknown", "trace_file"])


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(_YAML_KEYS, _YAML_SCALAR), max_size=5),
       st.integers(0, 3).map(lambda n: "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9 if i else ['x'] * 9)}]\n"
                                               for i in range(n * 3))))
def test_fuzzed_machine_files_through_the_command(tmp_path_factory, pairs, bomb: str) -> None:
    d = tmp_path_factory.mktemp("fz")
    text = bomb + "kernel: /etc/hostname\n" + "".join(f"{k}: {v}\n" for k, v in pairs if k != "kernel")
    (d / "m.yaml").write_text(text)
    _check_outcome(_run_bounded(["run", str(d / "m.yaml")]))


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_ARGV)
def test_fuzzed_argv_in_process_is_a_config_or_a_config_error(argv: list[str]) -> None:
    """The same argvs, many more of them, through the parser and validation (no subprocess, no VM)."""
    try:
        parse_qemu_args(["-enable-kvm", *argv]).validate()
    except ConfigError as exc:
        assert "Traceback" not in str(exc)
    except HelpRequested as wanted:  # -device help and friends: printed, status 0
        assert wanted.text


# ---- -mon chardev=ID,mode=control: QMP on a -chardev socket, as libvirt starts QEMU ----

def test_mon_becomes_a_qmp_endpoint_and_mistakes_are_qemus() -> None:
    c = parse_qemu_args(["-enable-kvm", "-mon", "chardev=q,mode=control",
                         "-chardev", "socket,id=q,path=/tmp/q.sock,server=on,wait=off"])
    assert c.qmp == ("unix:/tmp/q.sock,server,wait=off",) and c.chardevs == ()
    tcp = parse_qemu_args(["-enable-kvm", "-chardev", "socket,id=q,host=127.0.0.1,port=4444,server=on",
                           "-mon", "q,mode=control"])
    assert tcp.qmp == ("tcp:127.0.0.1:4444,server",)
    for argv, message in ((["-mon", "chardev=q"], "no human monitor"), (["-mon", "x,mode=control"], "'x' not found"),
                          (["-mon", "q,mode=control,pretty=on"], "pretty=on is not supported"),
                          (["-chardev", "pty,id=p", "-mon", "p,mode=control"], "on a listening socket")):
        with pytest.raises(ConfigError, match=message):
            parse_qemu_args(["-enable-kvm", "-chardev", "socket,id=q,path=/tmp/q.sock,server=on", *argv])


@pytest.mark.kvm_host
@pytest.mark.skipif(__import__("shutil").which("qemu-system-x86_64") is None, reason="QEMU is the oracle")
def test_mon_on_a_chardev_answers_as_qemus_does(tmp_path: Path) -> None:
    import asyncio
    import time

    from qemu.qmp import QMPClient

    async def session(sock: Path) -> list:
        qmp = QMPClient("mon-test")
        end = time.monotonic() + 60
        while True:
            try:
                await qmp.connect(str(sock))
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)
        replies = [await qmp.execute("query-status"), sorted(await qmp.execute("query-version"))]
        try:
            await qmp.execute("quit")
            await qmp.disconnect()
        except EOFError:
            pass
        return replies

    results = []
    for argv0 in ([_sys.executable, "-m", "kvmpy", "-enable-kvm", "-kernel", str(build_guest("hello"))],
                  ["qemu-system-x86_64"]):
        sock = tmp_path / f"m{len(results)}.sock"
        proc = _subprocess.Popen([*argv0, "-S", "-m", "32", "-display", "none", "-nodefaults",
                                  "-chardev", f"socket,id=mon0,path={sock},server=on,wait=off",
                                  "-mon", "chardev=mon0,mode=control"], stdout=_subprocess.PIPE,
                                 stderr=_subprocess.PIPE, env=dict(_os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
        try:
            results.append(asyncio.run(asyncio.wait_for(session(sock), 90)))
            proc.wait(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, proc.stderr.read()
    ours, qemu = results
    assert ours == qemu  # {'running': False, 'status': 'prelaunch'} and the keys of query-version

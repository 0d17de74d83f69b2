"""The kvmpy command: QEMU flags map onto the config; user mistakes are one line and status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpy.cli import main, parse_qemu_args
from kvmpy.config import ConfigError
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
    assert (riscv.arch, riscv.accel, riscv.bios) == ("riscv64", "tcg", "none")


@pytest.mark.parametrize("argv, message", [
    (["-enable-kvm", "-usb"], "unsupported option '-usb'"),
    (["-enable-kvm", "-m"], "needs an argument"),
    (["-enable-kvm", "-m", "huge"], "invalid memory size"),
    (["-enable-kvm", "-m", "1G,slots=4,maxmem=8G"], "hotplug"),
    (["-kernel", "k"], "x86 guests need KVM"),
    (["-enable-kvm", "-device", "e1000"], "unsupported device 'e1000'"),
    (["-enable-kvm", "-display", "gtk"], "no display"),
    (["-enable-kvm", "-machine", "sun4m"], "machine type"),
    (["-enable-kvm", "stray"], "unexpected argument"),
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


def test_help_and_version(capsys) -> None:
    assert main(["--help"]) == 0
    assert "-enable-kvm" in capsys.readouterr().out
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

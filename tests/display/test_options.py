"""-vnc and -display as QEMU reads them, their one-line errors (QEMU 7.2's wording), the YAML key, and the CLI."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from kvmpy.cli import parse_qemu_args
from kvmpy.config import from_mapping
from kvmpy.display.options import parse_display, parse_vnc
from kvmpy.errors import ConfigError


@pytest.mark.parametrize("text, want", [
    (":1", ("127.0.0.1", 1, False)),  # loopback unless told otherwise
    ("0.0.0.0:2", ("0.0.0.0", 2, False)),
    ("[::1]:3,password=on", ("::1", 3, True)),
    ("localhost:0,password=off", ("localhost", 0, False)),
    ("vnc=:4", ("127.0.0.1", 4, False)),  # the -display vnc= form reads the same
])
def test_vnc_values(text, want) -> None:
    got = parse_vnc(text)
    assert (got.host, got.display, got.password, got.source, got.port) == (*want, f"-vnc {text}", 5900 + want[1])
    assert parse_vnc("none") is None


def test_a_port_in_use_is_qemus_one_line_error() -> None:
    from kvmpy.display.console import start_vnc

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if not 5900 <= port <= 0xFFFF:
            pytest.skip("the free port is no VNC display's")
        opts = parse_vnc(f"127.0.0.1:{port - 5900}")
        with pytest.raises(ConfigError) as exc:
            start_vnc(opts, None, None, None)
    assert str(exc.value) == f"-vnc 127.0.0.1:{port - 5900}: Failed to find an available port: Address already in use"


# The messages qemu-system-x86_64 7.2 prints for the same arguments (after "qemu-system-x86_64: ").
@pytest.mark.parametrize("text, message", [
    ("foo", "-vnc foo: no vnc port specified"),
    ("1", "-vnc 1: no vnc port specified"),
    (":abc", "-vnc :abc: can't convert to a number: abc"),
    (":-1", "-vnc :-1: can't convert to a number: -1"),
    (":0,password=maybe", "-vnc :0,password=maybe: Parameter 'password' expects 'on' or 'off'"),
    (":0,bogus=1", "-vnc :0,bogus=1: Invalid parameter 'bogus'"),
    ("127.0.0.1:99999", "-vnc 127.0.0.1:99999: port 99999 out of range"),
    (":59636", "-vnc :59636: port 59636 out of range"),
])
def test_vnc_errors_are_qemus(text, message) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_vnc(text)
    assert str(exc.value) == message


@pytest.mark.parametrize("text, message", [
    ("vnc=foo", "-display vnc=foo: no vnc port specified"),
    ("vnc", "-display vnc: VNC requires a display argument vnc=<display>"),
    ("bogus", "-display bogus: Parameter 'type' does not accept value 'bogus'"),
])
def test_display_errors_are_qemus(text, message) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_display(text)
    assert str(exc.value) == message


def test_cli_and_yaml_fill_the_same_field(tmp_path) -> None:
    assert parse_qemu_args(["-enable-kvm", "-vnc", ":5,password=on"]).vnc == ":5,password=on"
    assert parse_qemu_args(["-enable-kvm", "-display", "vnc=:5"]).vnc == "vnc=:5"
    assert parse_qemu_args(["-enable-kvm", "-display", "none"]).vnc is None
    assert parse_qemu_args(["-enable-kvm", "-vnc", ":1", "-vnc", "none"]).vnc is None
    assert from_mapping({"vnc": ":5,password=on"}, tmp_path).vnc == ":5,password=on"
    with pytest.raises(ConfigError, match="no vnc port specified"):
        from_mapping({"vnc": "5"}, tmp_path).validate()
    with pytest.raises(ConfigError, match="'vnc' must be str"):
        from_mapping({"vnc": 5}, tmp_path)


def test_a_wrong_vnc_is_one_line_and_status_2() -> None:
    p = subprocess.run([sys.executable, "-m", "kvmpy", "-enable-kvm", "-vnc", "host"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr == "kvmpy: error: -vnc host: no vnc port specified\n"

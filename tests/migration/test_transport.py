"""Migration URIs and channels: hostile URIs are one-line MigrationErrors, snapshot files are 0600."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.migration.errors import MigrationError
from kvmpy.migration.transport import Listener, Uri, connect, parse_uri


@pytest.mark.parametrize("text, expect", [
    ("tcp:127.0.0.1:4444", Uri("tcp", "127.0.0.1", 4444)),
    ("tcp::4444", Uri("tcp", "", 4444)),
    ("tcp:0:0", Uri("tcp", "0", 0)),
    ("tcp:[::1]:5", Uri("tcp", "::1", 5)),
    ("tcp:localhost:65535", Uri("tcp", "localhost", 65535)),
    ("tcp:xn--9ca.example:1", Uri("tcp", "xn--9ca.example", 1)),  # IDNA names go in their ASCII form
    ("tcp:host.example.:1", Uri("tcp", "host.example.", 1)),
    ("unix:/tmp/m.sock", Uri("unix", path="/tmp/m.sock")),
    ("file:/tmp/vm.snap", Uri("file", path="/tmp/vm.snap")),
    ("exec:cat > /dev/null", Uri("exec", path="cat > /dev/null")),
])
def test_good_uris(text: str, expect: Uri) -> None:
    assert parse_uri(text) == expect


@pytest.mark.parametrize("text, error", [
    ("tcp:é..:4444", "not ASCII"),  # the probe's: TypeError "encoding of hostname failed" before
    ("tcp:é.example:1", "not ASCII"),
    ("tcp:a..b:1", "invalid host name"),
    ("tcp:" + "a" * 64 + ":1", "invalid host name"),
    ("tcp:" + ".".join(["a" * 60] * 5) + ":1", "longer than 253"),
    ("tcp:-a:1", "invalid host name"),
    ("tcp:a b:1", "invalid host name"),
    ("tcp:[::g]:1", "invalid host name"),
    ("tcp:[fe80::1%é]:1", "not ASCII"),  # ipaddress takes any scope id; the socket module cannot
    ("tcp:[1.2.3.4]:1", "invalid IPv6 address"),
    ("tcp:h:65536", "out of range"),
    ("tcp:h:²", "invalid port"),  # isdigit() is True, int() raises ValueError
    ("tcp:h:٤٤", "invalid port"),  # Arabic-Indic digits: int() would take them
    ("tcp:h:" + "9" * 5000, "invalid port"),  # int() refuses over 4300 digits with ValueError
    ("tcp:h:-1", "invalid port"),
    ("tcp:h", "tcp:HOST:PORT"),
    ("unix:/tmp/\ud800", "cannot be encoded"),
    ("file:/tmp/a\0b", "NUL"),
    ("unix:/" + "a" * 200, "longer than 107 bytes"),
    ("unix:", "needs a path"),
    ("exec:", "needs a command"),
    ("rdma:1.2.3.4:5", "unknown migration protocol"),
    ("nothing", "invalid migration URI"),
    ("file:" + "x" * (1 << 17), "longer than"),
])
def test_bad_uris_are_one_line_errors(text: str, error: str) -> None:
    with pytest.raises(MigrationError, match=error) as info:
        parse_uri(text)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_non_strings_are_refused() -> None:
    for value in (None, 5, ["tcp:a:1"], {"tcp": 1}, b"tcp:a:1"):
        with pytest.raises(MigrationError, match="invalid migration URI"):
            parse_uri(value)  # type: ignore[arg-type]


HOSTILE_TEXT = st.one_of(
    st.text(max_size=300),
    st.builds(lambda scheme, host, port: f"{scheme}:{host}:{port}",
              st.sampled_from(["tcp", "unix", "file", "exec", "tcp:["]),
              st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
              | st.sampled_from(["é..", "é", "ß.de", "xn--", "-", "a" * 64, "[::1]", "[", "]", "0", "::"]),
              st.integers(min_value=-(1 << 64), max_value=1 << 64).map(str)
              | st.builds(lambda d, n: d * n, st.sampled_from("19٤"), st.integers(4000, 6000))  # huge integers
              | st.text(alphabet="0123456789²٤", max_size=10)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE_TEXT)
def test_parse_uri_fuzz_never_crashes(text: str) -> None:
    """Any text: a Uri whose host and path the socket layer can encode, or one MigrationError line."""
    try:
        uri = parse_uri(text)
    except MigrationError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    assert uri.scheme in ("tcp", "unix", "exec", "file")
    if uri.scheme == "tcp":
        assert uri.host.isascii() and 0 <= uri.port <= 65535
        uri.host.encode("idna")  # what socket.connect/bind do with a str host
    else:
        assert b"\0" not in os.fsencode(uri.path)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("é..aß-\u3002\uff0e\u0000x"), min_size=1, max_size=12),
       st.integers(min_value=1, max_value=65535))
def test_connect_and_listen_turn_unusable_hosts_into_migration_errors(host: str, port: int) -> None:
    """Even a Uri built without parse_uri never raises TypeError/UnicodeError from bind/connect."""
    uri = Uri("tcp", host=host, port=port)
    for attempt in (lambda: connect(uri, timeout=0.2), lambda: Listener(uri)):
        try:
            result = attempt()
        except MigrationError as exc:
            assert "\n" not in str(exc)
        else:
            result.close()


def test_connect_to_port_zero_is_refused() -> None:
    with pytest.raises(MigrationError, match="port 0 is only for listening"):
        connect(parse_uri("tcp:127.0.0.1:0"))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_snapshot_file_is_created_0600_even_under_umask_000(tmp_path: Path, umask_000) -> None:
    path = tmp_path / "vm.snap"
    ch = connect(parse_uri(f"file:{path}"))
    ch.write(b"guest RAM")
    ch.finish()
    assert _mode(path) == 0o600 and path.read_bytes() == b"guest RAM"


def test_an_existing_snapshot_file_is_narrowed_to_0600(tmp_path: Path, umask_000) -> None:
    path = tmp_path / "vm.snap"
    path.write_bytes(b"old contents")
    path.chmod(0o644)
    ch = connect(parse_uri(f"file:{path}"))
    ch.write(b"new")
    ch.finish()
    assert _mode(path) == 0o600 and path.read_bytes() == b"new"


def test_a_fifo_keeps_its_mode(tmp_path: Path, umask_000) -> None:
    """Only regular files are narrowed: a FIFO (or /dev/null) is written as it is."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ch = connect(parse_uri(f"file:{fifo}"))
        ch.write(b"x")
        ch.close()
        assert os.read(reader, 10) == b"x" and _mode(fifo) == 0o644
    finally:
        os.close(reader)


def test_listening_on_every_interface_is_kept(tmp_path: Path) -> None:
    """``tcp::PORT`` binds 0.0.0.0 as QEMU does (documented: restore validates everything)."""
    listener = Listener(parse_uri("tcp::0"))
    try:
        host, port = listener.address
        assert host == "0.0.0.0" and port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        listener.close()


@pytest.mark.parametrize("spec", ["tcp:127.0.0.1:0", "unix"])
def test_closing_a_listener_while_another_thread_accepts(spec: str, tmp_path: Path) -> None:
    # migrate_cancel / a failed destination closes the listener while the incoming thread sits in
    # accept(), which then closes it too; neither side may trip over the other (was AttributeError).
    import threading

    uri = parse_uri(f"unix:{tmp_path / 'm.sock'}" if spec == "unix" else spec)
    for _ in range(50):
        lst = Listener(uri)
        errors: list[BaseException] = []

        def accept() -> None:
            try:
                lst.accept()
            except BaseException as exc:  # noqa: BLE001 - the test inspects what escaped
                errors.append(exc)

        t = threading.Thread(target=accept)
        t.start()
        lst.close()
        t.join(5)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], MigrationError), errors
        lst.close()  # closing twice is harmless

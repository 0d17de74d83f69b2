"""-netdev stream / socket: real sockets between two kvmpy backends, and hostile peers."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import time

import pytest

from kvmpy.errors import ConfigError
from kvmpy.net.netdev import build_netdev
from kvmpy.net.stream import MAX_FRAME, TX_BUFFER_LIMIT, FrameDecoder, FramingError, StreamBackend, encode_frame


@pytest.fixture
def backends():
    made: list[StreamBackend] = []

    def make(kind: str, netdev_id: str, **props: str) -> StreamBackend:
        backend = build_netdev(kind, netdev_id, [(k.replace("_", "."), v) for k, v in props.items()])
        assert isinstance(backend, StreamBackend)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def _frame(rng: random.Random, size: int | None = None) -> bytes:
    return rng.randbytes(size if size is not None else rng.randint(14, 1514))


def _pair(backends, tmp_path, collector_factory, inet: bool = False):
    if inet:
        server = backends("stream", "s", server="on", addr_type="inet", addr_host="127.0.0.1", addr_port="0")
        port = str(server.endpoint.port)
        client = backends("stream", "c", server="off", addr_type="inet", addr_host="127.0.0.1", addr_port=port)
    else:
        path = str(tmp_path / "s.sock")
        server = backends("stream", "s", server="on", addr_type="unix", addr_path=path)
        client = backends("stream", "c", addr_type="unix", addr_path=path)
    srx, crx = collector_factory(), collector_factory()
    server.start(srx)
    client.start(crx)
    assert client.wait_connected(5) and server.wait_connected(5)
    return server, client, srx, crx


def _unix_server(backends, tmp_path, collector) -> tuple[StreamBackend, str]:
    path = str(tmp_path / "s.sock")
    server = backends("stream", "s", server="on", addr_type="unix", addr_path=path)
    server.start(collector)
    return server, path


def _raw_peer(path: str) -> socket.socket:
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(path)
    return peer


# --- the framing -------------------------------------------------------------------------------
def test_decoder_reassembles_frames_split_anywhere() -> None:
    rng = random.Random(1)
    frames = [_frame(rng) for _ in range(50)]
    wire = b"".join(encode_frame(f) for f in frames)
    for _ in range(20):
        decoder, out, pos = FrameDecoder(), [], 0
        while pos < len(wire):
            step = rng.randint(1, 3000)
            decoder.feed(wire[pos:pos + step])
            pos += step
            while (frame := decoder.next_frame()) is not None:
                out.append(frame)
        assert out == frames and decoder.buffered == 0


def test_decoder_refuses_oversized_lengths_and_skips_empty_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", 0) + encode_frame(b"x" * MAX_FRAME))
    assert decoder.next_frame() == b"x" * MAX_FRAME
    decoder.feed(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FramingError, match="69633-byte frame"):
        decoder.next_frame()


# --- two kvmpy backends --------------------------------------------------------------------------
@pytest.mark.parametrize("inet", [False, True], ids=["unix", "inet"])
def test_client_and_server_exchange_frames_both_ways(backends, tmp_path, collector_factory, inet) -> None:
    server, client, srx, crx = _pair(backends, tmp_path, collector_factory, inet)
    rng = random.Random(2)
    to_server = [_frame(rng) for _ in range(200)] + [_frame(rng, MAX_FRAME)]
    to_client = [_frame(rng) for _ in range(200)]
    for a, b in zip(to_server, to_client):
        client.send(a)
        server.send(memoryview(b))
    client.send(to_server[-1])
    assert srx.take(len(to_server)) == to_server
    assert crx.take(len(to_client)) == to_client
    assert client.stats.tx_dropped == 0 and server.stats.rx_frames == len(to_server)
    assert server.info().startswith("stream: ") and ("unix:" in server.info() or "tcp:" in server.info())


def test_a_full_nic_holds_the_frame_until_rx_ready(backends, tmp_path, collector_factory) -> None:
    server, client, srx, _ = _pair(backends, tmp_path, collector_factory)
    srx.full.set()
    frames = [bytes([i]) * 60 for i in range(10)]
    for f in frames:
        client.send(f)
    time.sleep(0.3)
    assert srx.frames.empty() and srx.refused == 1  # refused once, then the reader waits for rx_ready
    srx.full.clear()
    server.rx_ready()
    assert srx.take(10) == frames


def test_link_down_drops_both_ways(backends, tmp_path, collector_factory) -> None:
    server, client, srx, crx = _pair(backends, tmp_path, collector_factory)
    server.set_link(False)
    client.send(b"a" * 60)
    server.send(b"b" * 60)
    assert srx.empty_after(0.3) and crx.empty_after(0.1)
    assert server.stats.rx_dropped == 1 and server.stats.tx_dropped == 1
    server.set_link(True)
    client.send(b"c" * 60)
    assert srx.get() == b"c" * 60


def test_server_serves_one_client_at_a_time_then_the_next(backends, tmp_path, collector) -> None:
    server, path = _unix_server(backends, tmp_path, collector)
    first = _raw_peer(path)
    assert server.wait_connected(5)
    second = _raw_peer(path)  # sits in the backlog, as with QEMU 7.2
    second.sendall(encode_frame(b"from-second" * 6))
    first.sendall(encode_frame(b"from-first" * 6))
    assert collector.get() == b"from-first" * 6
    assert collector.empty_after(0.3)
    first.close()
    assert collector.get() == b"from-second" * 6  # served once the first went away
    server.send(b"reply" * 12)
    second.settimeout(5)
    assert second.recv(100) == encode_frame(b"reply" * 12)
    second.close()
    server.close()
    assert not os.path.exists(path)  # the socket file is removed at close


def test_client_without_reconnect_stays_down_like_qemu_7_2(backends, tmp_path, collector, caplog) -> None:
    caplog.set_level(logging.WARNING, "kvmpy.net.stream")
    client = backends("stream", "c", addr_type="unix", addr_path=str(tmp_path / "nobody"))
    client.start(collector)
    deadline = time.monotonic() + 5
    while "error" not in client.info() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "error: No such file or directory" in client.info()
    assert "connecting to unix:" in caplog.text
    client.send(b"x" * 60)
    assert client.stats.tx_dropped == 1


def test_client_with_reconnect_comes_back(backends, tmp_path, collector_factory) -> None:
    path = str(tmp_path / "s.sock")
    client = backends("stream", "c", addr_type="unix", addr_path=path, reconnect="1")
    crx = collector_factory()
    client.start(crx)
    time.sleep(0.2)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(5)
    conn, _ = listener.accept()
    assert client.wait_connected(5)
    conn.close()
    conn, _ = listener.accept()  # reconnected after the peer went away
    conn.sendall(encode_frame(b"again" * 12))
    assert crx.get() == b"again" * 12
    conn.close()
    listener.close()


def test_socket_listen_and_connect(backends, collector_factory) -> None:
    server = backends("socket", "s", listen="127.0.0.1:0")
    server.start(srx := collector_factory())
    client = backends("socket", "c", connect=f"127.0.0.1:{server.endpoint.port}")
    client.start(collector_factory())
    assert client.wait_connected(5)
    client.send(b"s" * 100)
    assert srx.get() == b"s" * 100
    assert client.info().startswith("socket: tcp:127.0.0.1:")


# --- hostile peers -------------------------------------------------------------------------------
def test_oversized_length_disconnects_the_peer_with_a_log_line(backends, tmp_path, collector, caplog) -> None:
    caplog.set_level(logging.WARNING, "kvmpy.net.stream")
    server, path = _unix_server(backends, tmp_path, collector)
    peer = _raw_peer(path)
    peer.sendall(encode_frame(b"ok" * 30) + struct.pack(">I", 0xFFFFFFFF) + b"junk")
    assert collector.get() == b"ok" * 30
    peer.settimeout(5)
    assert peer.recv(10) == b""  # disconnected
    assert "4294967295-byte frame" in caplog.text and server.stats.disconnects == {"bad framing": 1}
    again = _raw_peer(path)
    again.sendall(encode_frame(b"next" * 20))
    assert collector.get() == b"next" * 20  # the server carries on
    again.close()
    peer.close()


def test_fuzz_random_streams_never_break_the_server(backends, tmp_path, collector) -> None:
    """A seeded loop of peers sending valid frames, garbage and cut-off streams in random chunks."""
    server, path = _unix_server(backends, tmp_path, collector)
    rng = random.Random(1234)
    for case in range(300):
        frames = [_frame(rng, rng.randint(1, 2000)) for _ in range(rng.randint(0, 5))]
        wire = b"".join(encode_frame(f) for f in frames)
        tail = rng.choice(["none", "garbage", "huge", "cut"])
        if tail == "garbage":
            wire += rng.randbytes(rng.randint(1, 300))
        elif tail == "huge":
            wire += struct.pack(">I", rng.randint(MAX_FRAME + 1, 2**32 - 1)) + rng.randbytes(50)
        elif tail == "cut" and frames:
            wire = wire[:-rng.randint(1, len(frames[-1]))]
            frames.pop()
        peer = _raw_peer(path)
        pos = 0
        try:
            while pos < len(wire):
                step = rng.randint(1, 4096)
                peer.sendall(wire[pos:pos + step])
                pos += step
            peer.shutdown(socket.SHUT_WR)
            peer.settimeout(10)
            while peer.recv(4096):  # the server closes its side when it is done with this peer
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # it dropped us mid-stream (a huge length)
        peer.close()
        got = []
        while not collector.frames.empty():
            got.append(collector.get())
        # Garbage parses as frames of random lengths: what was valid before it always arrives first.
        assert got[:len(frames)] == frames, case
    assert server.stats.disconnects.get("internal error", 0) == 0


def test_send_never_blocks_on_a_peer_that_does_not_read(backends, tmp_path, collector) -> None:
    server, path = _unix_server(backends, tmp_path, collector)
    peer = _raw_peer(path)
    assert server.wait_connected(5)
    frame = b"z" * 1514
    started = time.monotonic()
    for _ in range(5000):
        server.send(frame)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    assert server.stats.tx_dropped > 0
    assert server.stats.tx_frames * (len(frame) + 4) < TX_BUFFER_LIMIT + 4 * 1024 * 1024  # bounded: socket + buffer
    peer.close()


# --- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("props, message", [
    ({"addr.type": "unix"}, "addr.path"),
    ({}, "Parameter 'addr' is missing"),
    ({"addr.type": "inet", "addr.port": "1"}, "addr.host"),
    ({"addr.type": "inet", "addr.host": "h", "addr.port": "99999"}, "out of range"),
    ({"addr.type": "fd", "addr.str": "3"}, "unexpected"),
    ({"addr.type": "fd"}, "not supported"),
    ({"addr.type": "unix", "addr.path": "x" * 200}, "too long"),
    ({"addr.type": "unix", "addr.path": "p", "addr.port": "1"}, "unexpected with addr.type=unix"),
    ({"server": "maybe", "addr.type": "unix", "addr.path": "p"}, "'on' or 'off'"),
    ({"server": "on", "reconnect": "1", "addr.type": "unix", "addr.path": "p"}, "incompatible"),
    ({"bogus": "1"}, "Parameter 'bogus' is unexpected"),
])
def test_bad_options_are_one_line_config_errors(props, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build_netdev("stream", "n0", list(props.items()))
    assert "\n" not in str(err.value) and str(err.value).startswith("-netdev stream,id=n0: ")


def test_listening_on_a_regular_file_or_busy_port_is_a_config_error(tmp_path) -> None:
    plain = tmp_path / "file"
    plain.write_text("keep me")
    with pytest.raises(ConfigError, match="not a socket"):
        build_netdev("stream", "n0", [("server", "on"), ("addr.type", "unix"), ("addr.path", str(plain))])
    assert plain.read_text() == "keep me"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    with pytest.raises(ConfigError, match="cannot listen on tcp:127.0.0.1:"):
        build_netdev("socket", "n0", [("listen", f"127.0.0.1:{busy.getsockname()[1]}")])
    busy.close()


def test_unknown_netdev_type() -> None:
    with pytest.raises(ConfigError, match="unknown netdev type"):
        build_netdev("vde", "n0", [])

"""make_netdev: the -netdev spec from the config -> the backend of its type, mistakes as one-line ConfigErrors."""

from __future__ import annotations

import importlib.util

import pytest

from kvmpy.errors import ConfigError
from kvmpy.net.netdev import build_netdev, make_netdev, netdev_types
from kvmpy.net.stream import StreamBackend

try:
    from kvmpy.config_devices import NetdevSpec  # helper frontend's spec
except ImportError:  # before frontend's branch is merged: the same shape
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class NetdevSpec:  # type: ignore[no-redef]
        type: str
        id: str
        props: tuple[tuple[str, str], ...] = ()


def test_make_netdev_builds_the_backend_the_spec_names(tmp_path) -> None:
    spec = NetdevSpec(type="stream", id="n0",
                      props=(("server", "on"), ("addr.type", "unix"), ("addr.path", str(tmp_path / "s"))))
    backend = make_netdev(spec)
    try:
        assert isinstance(backend, StreamBackend) and backend.id == "n0"
        assert backend.info() == "stream: listening"
    finally:
        backend.close()


def test_every_type_is_known() -> None:
    assert netdev_types() == ("socket", "stream", "tap", "user")
    with pytest.raises(ConfigError, match=r"-netdev dgram: unknown netdev type \(kvmpy has socket, stream, tap, user\)"):
        build_netdev("dgram", "n0", [])


def test_missing_id() -> None:
    with pytest.raises(ConfigError, match="Parameter 'id' is missing"):
        build_netdev("stream", "", [])


def test_tap_mistakes_are_config_errors() -> None:
    if importlib.util.find_spec("kvmpy.net.tap") is None:
        with pytest.raises(ConfigError, match="-netdev tap: this backend is not available in this build"):
            build_netdev("tap", "t0", [("ifname", "tap0")])
    else:
        with pytest.raises(ConfigError, match="queues"):
            build_netdev("tap", "t0", [("queues", "4")])

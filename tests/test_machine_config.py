"""MachineConfig and the YAML schema: good files load, every kind of mistake is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmpy.config import ConfigError, MachineConfig, load_yaml, parse_size

MiB = 1 << 20


def test_sizes() -> None:
    assert parse_size("512") == 512 * MiB
    assert parse_size("512M") == parse_size("512MiB") == 512 * MiB
    assert parse_size("2G") == 2048 * MiB
    assert parse_size("1.5g") == 1536 * MiB
    assert parse_size("65536K") == 64 * MiB
    assert parse_size(64) == 64 * MiB
    for bad in ("", "abc", "-1", "0", "12Q", True):
        with pytest.raises(ConfigError):
            parse_size(bad)


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "k.elf").write_bytes(b"x")
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_yaml_file_with_relative_kernel(tmp_path: Path) -> None:
    cfg = load_yaml(write(tmp_path, """
name: t
memory: 64M
smp: 2
kernel: k.elf
append: "a=1"
serial: none
no_reboot: true
devices:
  - {type: isa-debug-exit, iobase: 0xf4, iosize: 4}
"""))
    assert cfg.kernel == tmp_path / "k.elf"
    assert (cfg.memory, cfg.smp, cfg.append, cfg.serial, cfg.no_reboot) == (64 * MiB, 2, "a=1", "none", True)
    assert (cfg.debug_exit.iobase, cfg.debug_exit.iosize) == (0xF4, 4)


@pytest.mark.parametrize("text, message", [
    ("kernel: k.elf\nmemroy: 64M\n", "unknown key"),
    ("kernel: k.elf\nsmp: two\n", "'smp' must be int"),
    ("kernel: k.elf\nsmp: true\n", "'smp' must be int"),
    ("kernel: k.elf\nmemory: lots\n", "invalid memory size"),
    ("kernel: missing.elf\n", "does not exist"),
    ("memory: 64M\n", "no kernel"),
    ("- just\n- a list\n", "mapping"),
    ("kernel: [unclosed\n", "invalid YAML at line"),
    ("kernel: k.elf\ndevices: [{type: virtio-blk}]\n", "unsupported device"),
    ("kernel: k.elf\nserial: tcp:1\n", "serial backend"),
    ("kernel: k.elf\nsmp: 0\n", "-smp"),
    ("kernel: k.elf\narch: mips\n", "architecture"),
    ("kernel: k.elf\naccel: tcg\n", "x86 guests need KVM"),
])
def test_yaml_mistakes_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(write(tmp_path, text))
    assert "\n" not in str(info.value)
    assert str(tmp_path / "m.yaml") in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "nope.yaml")


def test_every_bundled_config_is_valid() -> None:
    configs = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    assert configs, "configs/ should hold example machines"
    for path in configs:
        text = path.read_text()
        assert "kernel:" in text, path
        import yaml

        from kvmpy.config import from_mapping

        from_mapping(yaml.safe_load(text), path.parent)  # schema-valid (kernels may need building)


# ---- hostile machine files (issue 11): each one clear line, never a traceback, hang or memory bomb ----------
def write_bytes(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "k.elf").write_bytes(b"x")
    p = tmp_path / "m.yaml"
    p.write_bytes(data)
    return p


BOMB = b"".join([b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"]
                + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n".encode()
                   for p, c in zip("abcdefgh", "bcdefghi")])


@pytest.mark.parametrize("data, message", ids=lambda v: repr(v)[:40] if isinstance(v, bytes) else None, argvalues=[
    (b"kernel: k.elf\nmemory: " + b"9" * 300 + b"\n", "too large"),
    (b"kernel: k.elf\nmemory: '" + b"9" * 300 + b"M'\n", "too large"),
    (b"kernel: k.elf\nmemory: " + b"1" * 5000 + b"\n", "cannot be converted"),
    (b"kernel: k.elf\nsmp: " + b"1" * 5000 + b"\n", "cannot be converted"),
    (b"kernel: k.elf\nname: \xff\xfe\n", "not UTF-8"),
    (b"kernel: k.elf\nname: " + b"[" * 2000 + b"]" * 2000 + b"\n", "nested deeper"),
    (b"kernel: k.elf\nname: " + b"{a: " * 2000 + b"}" * 2000 + b"\n", "nested deeper"),
    (b"kernel: k.elf\nqmp: \"unix:/tmp/a\\0b,server\"\n", "NUL"),
    (b"kernel: \"k.elf\\0x\"\n", "NUL"),
    (b"kernel: \"~nouser-kvmpy-test/x\"\n", "home directory"),
    (BOMB + b"kernel: k.elf\ntrace: *i\n", "aliases are expanded"),
    (BOMB + b"kernel: k.elf\ndevices: [{type: isa-debug-exit, iosize: *i}]\n", "aliases are expanded"),
    (b"kernel: k.elf\ntrace: [[in_asm, exec]]\n", "'trace items' must be str"),
    (b"kernel: k.elf\ndevices: [{type: isa-debug-exit, iosize: [1, 2]}]\n", "iosize' must be int or str"),
    (b"kernel: k.elf\ndevices: [{type: isa-debug-exit, iobase: '" + b"9" * 5000 + b"'}]\n", "invalid iobase"),
    (b"a: &a [*a]\nkernel: k.elf\n", "contains it"),
    (b"kernel: k.elf\nappend: [" + b"1, " * 20000 + b"]\n", "more than 10000 nodes"),
    (b"kernel: k.elf\nname: \"a\\0b\x01\"\n\x00", "invalid YAML at character"),
    (b"kernel: k.elf\nkernel: x\n  bad: indent\n", "invalid YAML at line"),
    (b"kernel: k.elf\nserial: \"file:a\\nb\\nc\"\n", "serial backend"),
    (b"kernel: k.elf\n\"bad\\nkey\": 1\n", "unknown key"),
])
def test_hostile_machine_files_are_one_clear_error(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(write_bytes(tmp_path, data))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_kernel_path_component_too_long(tmp_path: Path) -> None:
    long_name = tmp_path / ("k" * 300)
    with pytest.raises(ConfigError, match="File name too long"):
        MachineConfig(kernel=long_name).validate()
    (tmp_path / "k.elf").write_bytes(b"x")
    with pytest.raises(ConfigError, match="File name too long"):
        MachineConfig(kernel=tmp_path / "k.elf", initrd=long_name).validate()


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "fifo"])
def test_machine_file_must_be_a_bounded_regular_file(tmp_path: Path, special: str) -> None:
    import os

    if special == "fifo":
        special = str(tmp_path / "fifo")
        os.mkfifo(special)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_yaml(Path(special))
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml(big)


def test_config_is_frozen_after_it_is_built(tmp_path: Path) -> None:
    import dataclasses

    cfg = load_yaml(write(tmp_path, "arch: riscv64\nkernel: k.elf\ntrace: [in_asm]\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.memory = 1  # type: ignore[misc]
    assert isinstance(cfg.trace, frozenset) and isinstance(cfg.qmp, tuple)
    assert dataclasses.replace(cfg, memory=64 * MiB).validate().memory == 64 * MiB


def test_huge_and_odd_sizes() -> None:
    for bad in ("9" * 400, "9" * 5000, 10 ** 4000, "1" + "0" * 25 + "T"):
        with pytest.raises(ConfigError, match="too large"):
            parse_size(bad)
    assert parse_size("0.5G") == 512 * MiB


# ---- fuzzing (issue 11, D): any machine file is a config or one ConfigError line, quickly -------------------
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.config import from_mapping

_KEYS = st.sampled_from(sorted(__import__("kvmpy.config", fromlist=["YAML_KEYS"]).YAML_KEYS) + ["x", "devices"])
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 1000),
                  st.floats(), st.text(max_size=30), st.sampled_from(["é..", "tcp:é..:4444,server", "~nouser-x/y",
                                                                      "a\0b", "9" * 5000, "1" * 400 + "M"]))
_DATA = st.recursive(_LEAF, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6) | _KEYS,
                                                                                    kids, max_size=4), max_leaves=15)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(_KEYS, _DATA, max_size=6))
def test_any_mapping_is_a_config_or_a_config_error(tmp_path_factory, data) -> None:
    try:
        from_mapping(data, Path("/nonexistent")).validate()
    except ConfigError as exc:
        assert "\n" not in str(exc)


_FRAGMENTS = st.sampled_from(["kernel: k.elf\n", "memory: ", "9" * 5000, "\n", "&a ", "*a", "[", "]", "{", "}",
                              ", ", "- ", "  ", "trace: ", "devices: [{type: isa-debug-exit, iosize: ", "qmp: ",
                              "tcp:é..:1,server", "\"\\0\"", "'", "\"", "\t", "\x01", "é", "!!binary ", "<<: *a\n",
                              "a: &a [x, x, x, x, x, x, x, x]\n", "b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n",
                              "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n", "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n",
                              "e: &e [*d, *d, *d, *d, *d, *d, *d, *d]\n", "1e999", ".nan", "0x" + "f" * 3000])


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_FRAGMENTS, max_size=30) | st.binary(max_size=200).map(lambda b: [b.decode("latin-1")]))
def test_any_yaml_text_is_a_config_or_one_line_quickly(tmp_path_factory, parts) -> None:
    d = tmp_path_factory.mktemp("y")
    (d / "k.elf").write_bytes(b"x")
    (d / "m.yaml").write_bytes("".join(parts).encode("utf-8", "surrogateescape"))
    start = time.monotonic()
    try:
        load_yaml(d / "m.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
    assert time.monotonic() - start < 5

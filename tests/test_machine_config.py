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

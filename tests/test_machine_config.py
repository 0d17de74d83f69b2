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
    ("arch: riscv64\nmemory: 64M\n", "no kernel"),  # pc boots its BIOS without one (test_firmware_boot_config)
    ("- just\n- a list\n", "mapping"),
    ("kernel: [unclosed\n", "invalid YAML at line"),
    ("kernel: k.elf\ndevices: [{type: virtio-gpu-pci}]\n", "unsupported device"),
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
    (b"kernel: k.elf\ndevices: [{type: isa-debug-exit, iosize: [1, 2]}]\n", "iosize must be text, a number or a boolean"),
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


# ---- one config model, validated per board (issue 12, item 4) ------------------------------------------------
import dataclasses

from kvmpy.config import BOARDS, TRACE_ITEMS, DebugExitConfig, board_named, parse_trace


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    k = tmp_path / "k.elf"
    k.write_bytes(b"x")
    return k


def test_arch_or_machine_selects_the_board_and_its_accelerator() -> None:
    assert (MachineConfig().arch, MachineConfig().machine, MachineConfig().accel) == ("x86_64", "pc", "kvm")
    rv = MachineConfig(arch="riscv64")
    assert (rv.machine, rv.accel) == ("virt", "tcg")
    assert (MachineConfig(machine="virt").arch, MachineConfig(machine="q35").machine) == ("riscv64", "pc")
    assert board_named("pc-i440fx-8.2") is BOARDS["pc"] and board_named("sifive_u") is None
    for board in BOARDS.values():
        assert board.trace <= set(TRACE_ITEMS), board.machine


@pytest.mark.parametrize("changes, words", [
    ({"smp": 9}, "invalid -smp 9 \\(1 to 8\\)"),
    ({"memory": 1024}, "out of range for machine 'virt' \\(1M to 16G\\)"),
    ({"memory": 32 << 30}, "out of range for machine 'virt'"),
    ({"memory": (1 << 20) + 512}, "multiple of 4 KiB"),
    ({"serial": "tcp:1"}, "serial backend"),
    ({"machine": "sifive_u"}, "unsupported machine type 'sifive_u'"),
    ({"arch": "x86_64"}, "machine 'virt' is a riscv64 board, not 'x86_64'"),
    ({"accel": "kvm"}, "TCG fallback"),
    ({"cpu": "host"}, "-cpu 'host' is not supported by machine 'virt' \\(use rv64"),
    ({"trace": {"bogus"}}, "unknown -d item"),
    ({"trace": {"op_opt", "exec"}}, "machine 'virt' does not honour -d op_opt"),
    ({"start_paused": True}, "machine 'virt' \\(riscv64\\) does not support -S"),
    ({"qmp": ("unix:/tmp/q,server",)}, "does not support -qmp"),
    ({"incoming": "defer"}, "does not support -incoming"),
    ({"debug_exit": DebugExitConfig()}, "does not support -device isa-debug-exit"),
    ({"linux_boot": "pvh"}, "does not support -machine linux-boot"),
    ({"initrd": Path("/etc/hostname")}, "does not support -initrd"),
    ({"tcg_tier": "fast"}, "tier='fast': the tier must be py or native"),
])
def test_the_virt_board_refuses_what_it_lacks_by_name(kernel: Path, changes: dict, words: str) -> None:
    good = MachineConfig(arch="riscv64", kernel=kernel, bios="none", cpu="rv64", trace={"in_asm", "tb_stats"})
    assert good.validate() is good
    with pytest.raises(ConfigError, match=words) as info:
        dataclasses.replace(good, **changes).validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("changes, words", [
    ({"trace": {"in_asm"}}, "machine 'pc' honours no -d items, so -d in_asm is refused"),
    ({"trace_file": Path("t.log")}, "so -D is refused"),
    ({"bios": "none"}, "could not find BIOS image 'none'"),
    ({"memory": 1 << 20}, "out of range for machine 'pc' \\(2M to 1T\\)"),
    ({"smp": 256}, "invalid -smp 256 \\(1 to 255\\)"),
    ({"accel": "tcg"}, "x86 guests need KVM"),
    ({"machine": "virt"}, "machine 'virt' is a riscv64 board, not 'x86_64'"),
    ({"tcg_tier": "native"}, "tier= is a TCG option: machine 'pc' runs on KVM"),
])
def test_the_pc_board_refuses_what_it_lacks_by_name(kernel: Path, changes: dict, words: str) -> None:
    good = MachineConfig(kernel=kernel, cpu="Skylake-Client", smp=4, start_paused=True, linux_boot="pvh",
                         debug_exit=DebugExitConfig(0xF4, 4), initrd=kernel)
    assert good.validate() is good
    with pytest.raises(ConfigError, match=words):
        dataclasses.replace(good, **changes).validate()


def test_missing_kernel_is_the_same_error_on_both_boards(tmp_path: Path) -> None:
    for arch in ("x86_64", "riscv64"):
        with pytest.raises(ConfigError, match="does not exist"):
            MachineConfig(arch=arch, kernel=tmp_path / "nope.elf").validate()


def test_trace_lists_use_qemus_item_names() -> None:
    assert parse_trace("in_asm,exec") == parse_trace(" in_asm , exec,,") == {"in_asm", "exec"}
    assert parse_trace("") == frozenset()
    for bad, words in (("in_asm,warp", "unknown -d item\\(s\\): 'warp'"), ("x" * 5000, "too long"),
                       (["in_asm"], "comma-separated")):
        with pytest.raises(ConfigError, match=words):
            parse_trace(bad)  # type: ignore[arg-type]
    assert MachineConfig(trace="exec,in_asm").trace == {"exec", "in_asm"}


@pytest.mark.parametrize("text, expect", [
    ("arch: riscv64\nkernel: k.elf\n", ("riscv64", "virt", "tcg")),
    ("machine: virt\nkernel: k.elf\ntrace: in_asm, exec\n", ("riscv64", "virt", "tcg")),
    ("arch: riscv64\naccel: tcg\nmemory: 128M\nbios: none\nkernel: k.elf\n", ("riscv64", "virt", "tcg")),
    ("machine: q35\nkernel: k.elf\n", ("x86_64", "pc", "kvm")),
    ("kernel: k.elf\n", ("x86_64", "pc", "kvm")),
])
def test_yaml_selects_the_board_by_arch_or_machine(tmp_path: Path, text: str, expect: tuple) -> None:
    cfg = load_yaml(write(tmp_path, text))
    assert (cfg.arch, cfg.machine, cfg.accel) == expect


@pytest.mark.parametrize("text, message", [
    ("arch: riscv64\naccel: kvm\nkernel: k.elf\n", "TCG fallback"),
    ("machine: virt\nkernel: k.elf\ninitrd: k.elf\n", "machine 'virt' \\(riscv64\\) does not support -initrd"),
    ("machine: virt\nkernel: k.elf\ntrace: [op_opt]\n", "does not honour -d op_opt"),
    ("machine: virt\narch: x86_64\nkernel: k.elf\n", "riscv64 board"),
    ("machine: sun4m\nkernel: k.elf\n", "unsupported machine type 'sun4m'"),
    ("machine: [virt]\nkernel: k.elf\n", "'machine' must be str"),
    ("kernel: k.elf\ntrace: in_asm\n", "machine 'pc' honours no -d items"),
    ("kernel: k.elf\ntrace: 'in_asm,warp'\n", "unknown -d item"),
])
def test_yaml_board_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(write(tmp_path, text))
    assert "\n" not in str(info.value)


# Values a Python caller (kvmpy.VM, a script) can put in any field: each is refused by name, never a traceback.
@pytest.mark.parametrize("changes, words", [
    ({"memory": "64M"}, "'memory' must be int, not str"),
    ({"memory": True}, "'memory' must be int, not bool"),
    ({"memory": 10 ** 5000}, "<a 16610-bit integer> bytes is out of range"),
    ({"memory": -(10 ** 400)}, "out of range"),
    ({"smp": 2.0}, "'smp' must be int, not float"),
    ({"smp": 10 ** 5000}, "invalid -smp <a 16610-bit integer>"),
    ({"kernel": 123}, "'kernel' must be Path or None, not int"),
    ({"kernel": "a\0b"}, "kernel path 'a.*' contains a NUL byte"),
    ({"initrd": "/etc/hostname", "arch": "riscv64"}, "does not support -initrd"),
    ({"trace": 5}, "'trace' must be frozenset, not int"),
    ({"trace": [["in_asm"]]}, "'trace' must be frozenset, not list"),
    ({"trace": {1, 2}}, "'trace' must hold strings"),
    ({"qmp": 5}, "'qmp' must be tuple, not int"),
    ({"qmp": (b"unix:/x,server",)}, "'qmp' must hold strings"),
    ({"debug_exit": (0xF4, 4)}, "'debug_exit' must be DebugExitConfig or None, not tuple"),
    ({"debug_exit": DebugExitConfig(10 ** 5000, 4)}, "iobase <a 16610-bit integer> is not a port"),
    ({"debug_exit": DebugExitConfig("0xf4", 4)}, "must be integers"),
    ({"name": b"vm"}, "'name' must be str or None, not bytes"),
    ({"machine": ["virt"]}, "'machine' must be str, not list"),
    ({"arch": {}}, "'arch' must be str, not dict"),
    ({"arch": "mips"}, "unknown architecture 'mips'"),
    ({"accel": "hvf"}, "unknown accelerator 'hvf'"),
    ({"no_reboot": 1}, "'no_reboot' must be bool, not int"),
    ({"serial": "file:a\nb"}, "serial backend 'file:a\\\\nb'"),
    ({"cpu": "x" * 5000}, "\\(5000 characters\\) is not supported by machine 'virt'"),
])
def test_hostile_field_values_are_refused_by_name(kernel: Path, changes: dict, words: str) -> None:
    fields = {"kernel": kernel, **changes}
    if "cpu" in changes:  # any model name is fine on pc (KVM's CPUID); the virt board names its own
        fields["arch"] = "riscv64"
    cfg = MachineConfig(**fields)
    with pytest.raises(ConfigError, match=words) as info:
        cfg.validate()
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="memroy"):
        MachineConfig(memroy=1)  # type: ignore[call-arg]


_ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 400),
                 st.floats(), st.text(max_size=12), st.binary(max_size=4), st.lists(st.text(max_size=4), max_size=3),
                 st.frozensets(st.sampled_from(sorted(TRACE_ITEMS)), max_size=3), st.sampled_from(
                     ["virt", "pc", "q35", "riscv64", "x86_64", "kvm", "tcg", "none", "rv64", "file:x", "a\0b"]),
                 st.builds(Path, st.sampled_from(["/etc/hostname", "/nonexistent", "x" * 300])))
_FIELDS = [f.name for f in dataclasses.fields(MachineConfig)]


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(_FIELDS), _ANY, max_size=8))
def test_any_field_values_are_a_config_or_one_config_error_line(fields: dict) -> None:
    fields.setdefault("kernel", Path("/etc/hostname"))
    try:
        MachineConfig(**fields).validate()
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600


@pytest.mark.parametrize("name", _FIELDS)
def test_every_field_checks_its_type(kernel: Path, name: str) -> None:
    fields = {"kernel": kernel, name: object()}
    with pytest.raises(ConfigError, match=f"config field '{name}' must be") as info:
        MachineConfig(**fields).validate()
    assert "\n" not in str(info.value)


def test_firmware_boot_config(tmp_path: Path) -> None:
    """pc without -kernel boots its BIOS: -bios FILE and -L DIR are found as QEMU finds them."""
    from kvmpy.firmware.bios import load_bios

    cfg = MachineConfig(memory=128 << 20).validate()  # the system SeaBIOS (Debian's seabios package)
    assert load_bios(cfg.bios, cfg.data_dirs).data[-16:-16 + 1] == b"\xea"  # the reset vector's far jump
    image = tmp_path / "my.bin"
    image.write_bytes(bytes(64 << 10))
    MachineConfig(bios=str(image)).validate()
    MachineConfig(bios="my.bin", data_dirs=(tmp_path,)).validate()
    for kw, message in (({"bios": "nope.bin"}, "could not find BIOS image 'nope.bin'"),
                        ({"bios": str(tmp_path / "nope.bin")}, "does not exist"),
                        ({"append": "x"}, "-append only allowed with -kernel"),
                        ({"initrd": image}, "-initrd only allowed with -kernel"),
                        ({"data_dirs": ("a",)}, "data_dirs")):
        with pytest.raises(ConfigError, match=message):
            MachineConfig(**kw).validate()  # type: ignore[arg-type]
    bad = tmp_path / "odd.bin"
    bad.write_bytes(bytes(1000))
    for name in (str(bad), "", "a\0b"):
        with pytest.raises(ConfigError, match="multiple of 64 KiB|does not exist|NUL"):
            MachineConfig(bios=name).validate()

"""Where -device ide-hd/ide-cd units go, what QEMU refuses, and the bootorder they give (kvmpy.devices.ide.units).

QEMU 7.2 is the oracle for every case: its one-line error for a broken command line, the
(bus, unit) its ``info qtree`` shows for an accepted one, and the ``bootorder`` list SeaBIOS
prints on its debug console (port 0x402) under QEMU. kvmpy's answers come from the same
arguments through its own front end.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kvmpy.boards.pc_pci import place
from kvmpy.cli import main, parse_qemu_args
from kvmpy.config import MachineConfig, load_yaml
from kvmpy.config_devices import check_devices
from kvmpy.devices.chardev import BufferBackend
from kvmpy.devices.ide.units import ide_units
from kvmpy.errors import ConfigError
from kvmpy.firmware.bootorder import bootorder
from kvmpy.monitor.block import query_block
from kvmpy.monitor.context import Context
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.removable import eject

QEMU = shutil.which("qemu-system-x86_64")
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is the oracle")
BASE = ["-nodefaults", "-display", "none"]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("d0", "d1", "d2", "d3", "d4"):
        (tmp_path / f"{name}.img").write_bytes(bytes(1 << 20))
    return tmp_path


def expand(args: list[str], where: Path) -> list[str]:
    return [a.replace("@", str(where) + "/") for a in args]


def none_drives(*names: str) -> list[str]:
    out = []
    for n in names:
        out += ["-drive", f"if=none,id={n},file=@{n}.img,format=raw"]
    return out


def kvmpy_units(args: list[str]) -> list:
    config = parse_qemu_args(["-enable-kvm", *args])
    check_devices(config.devices, config.drives, config.blockdevs, config.netdevs, config.chardevs, config.objects)
    return ide_units(config)


def kvmpy_error(args: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        config = parse_qemu_args(["-enable-kvm", *args])
        check_devices(config.devices, config.drives, config.blockdevs, config.netdevs, config.chardevs,
                      config.objects)
        bootorder(place(config.devices), ide_units(config), devices=config.devices)
    return str(info.value)


def qemu_error(args: list[str]) -> str:
    p = subprocess.run([QEMU, *BASE, "-S", "-qmp", "stdio", *args], capture_output=True, timeout=60, text=True,
                       input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n')
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("qemu-system-x86_64: ")]
    assert len(lines) == 1, p.stderr
    return lines[0][len("qemu-system-x86_64: "):]


@pytest.mark.parametrize("args", [
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,unit=2"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,bus=ide.2"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,bus=pci.0"],
    [*none_drives("d0", "d1"), "-device", "ide-hd,drive=d0,bus=ide.0,unit=0", "-device", "ide-hd,drive=d1,bus=ide.0,unit=0"],
    [*none_drives("d0", "d1", "d2"), "-device", "ide-hd,drive=d0", "-device", "ide-hd,drive=d1", "-device", "ide-hd,drive=d2"],
    ["-drive", "file=@d3.img,format=raw,index=0", *none_drives("d0"), "-device", "ide-hd,drive=d0,bus=ide.0,unit=0"],
    ["-drive", "file=@d3.img,format=raw,index=2", "-drive", "file=@d4.img,format=raw,index=3", *none_drives("d0"),
     "-device", "ide-hd,drive=d0"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0", "-device", "ide-hd,drive=d0"],
    ["-drive", "if=none,id=d0,media=cdrom", "-device", "ide-hd,drive=d0"],
    ["-drive", "if=none,id=d0,file=@d0.img,format=raw,media=cdrom", "-device", "ide-hd,drive=d0"],
    ["-drive", "if=none,id=d0,file=@d0.img,format=raw,readonly=on", "-device", "ide-hd,drive=d0"],
    ["-drive", "if=ide,id=d0,file=@d0.img,format=raw", "-device", "ide-hd,drive=d0"],
    ["-device", "ide-hd"],
    ["-device", "ide-hd,unit=3"],
    ["-device", "ide-hd,drive=nope"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,unit=-1"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,unit=1x"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,unit="],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,unit=4294967296"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,bus="],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,bootindex=99999999999"],
    [*none_drives("d0"), "-device", "virtio-blk-pci,drive=d0,bootindex=-2147483649"],
    ["-device", "ide-hd,drive="],
    ["-blockdev", "driver=file,node-name=f0,filename=@d0.img,read-only=on", "-device", "ide-hd,drive=f0"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,foo=1"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,bootindex=x"],
    [*none_drives("d0", "d1"), "-device", "ide-hd,drive=d0,bootindex=1", "-device", "ide-cd,drive=d1,bootindex=1"],
    [*none_drives("d0"), "-device", "virtio-blk-pci,drive=d0,bootindex=2", "-device", "ide-cd,bootindex=2"],
], ids=lambda a: " ".join(a)[-60:])
def test_mistakes_are_qemus(args: list[str], images: Path) -> None:
    argv = expand(args, images)
    assert kvmpy_error(argv) == qemu_error(argv)


QTREE = re.compile(r'bus: ide\.(\d)|dev: ide-(hd|cd)|drive = "([^"]*)"|unit = (\d+)')


def qemu_placement(args: list[str]) -> set[tuple[int, int, str, str]]:
    """(bus, unit, kind, drive) of every IDE unit in QEMU's info qtree."""
    p = subprocess.run([QEMU, *BASE, "-S", "-monitor", "stdio", *args], input="info qtree\nquit\n",
                       capture_output=True, timeout=60, text=True)
    out, bus, kind, drive = set(), -1, "", ""
    for m in QTREE.finditer(p.stdout):
        if m.group(1) is not None:
            bus = int(m.group(1))
        elif m.group(2) is not None:
            kind, drive = m.group(2), ""
        elif m.group(3) is not None:
            drive = m.group(3)
        elif kind:
            out.add((bus, int(m.group(4)), kind, drive))
            kind = ""
    return out


@pytest.mark.parametrize("args", [
    [*none_drives("d0", "d1"), "-device", "ide-hd,drive=d0", "-device", "ide-cd,drive=d1"],
    ["-drive", "file=@d3.img,format=raw,index=0", "-drive", "file=@d4.img,format=raw,index=1", *none_drives("d0"),
     "-device", "ide-hd,drive=d0"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,bus=ide.1", "-drive", "file=@d3.img,format=raw,index=2"],
    [*none_drives("d0", "d1", "d2"), "-device", "ide-hd,drive=d0,unit=1", "-device", "ide-cd,drive=d1",
     "-device", "ide-hd,drive=d2,bus=ide.0", "-device", "ide-cd,bus=ide.0"],
    ["-drive", "if=none,id=c0,media=cdrom", "-device", "ide-cd,drive=c0,bus=ide.0,unit=1", "-hda", "@d1.img"],
    [*none_drives("d0"), "-device", "ide-hd,drive=d0,unit=0x1,bootindex=0x10", "-device", "ide-cd,drive=,unit=-0"],
    ["-blockdev", "driver=file,node-name=f0,filename=@d0.img", "-blockdev",
     "driver=raw,node-name=r1,file.driver=file,file.filename=@d1.img,read-only=on",
     "-device", "ide-hd,drive=f0,bus=ide.0", "-device", "ide-cd,drive=r1"],
], ids=lambda a: " ".join(a)[-60:])
def test_units_go_where_qemu_puts_them(args: list[str], images: Path) -> None:
    argv = expand(args, images)
    mine = {(u.bus, u.unit, u.kind, u.node or (u.drive.id if u.drive is not None else "")) for u in kvmpy_units(argv)}
    assert mine == qemu_placement(argv)


def seabios_bootorder(args: list[str], tmp: Path) -> list[str]:
    """The bootorder entries SeaBIOS lists on its debug console under QEMU."""
    log = tmp / "debugcon.txt"
    argv = [QEMU, *BASE, "-m", "128", "-no-reboot", "-chardev", f"file,id=dbg,path={log}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg", *args]
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as p:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                if "Searching bootorder" in text or "Scan for option roms" in text:
                    break
                time.sleep(0.2)
        finally:
            p.kill()
    lines = text.splitlines()
    if "boot order:" not in lines:
        return []
    out = []
    for line in lines[lines.index("boot order:") + 1:]:
        m = re.fullmatch(r"\d+: (.*)", line)
        if m is None:
            break
        out.append(m.group(1))
    return out


@pytest.mark.skipif(not SEABIOS.is_file(), reason="needs seabios")
@pytest.mark.parametrize("args", [
    [*none_drives("d0", "d1", "d2"), "-device", "ide-hd,drive=d0,bus=ide.0,unit=1,bootindex=3",
     "-device", "ide-hd,drive=d1,bootindex=2", "-device", "ide-cd,drive=d2,bus=ide.0,unit=0,bootindex=1",
     "-boot", "strict=on"],
    [*none_drives("d0", "d1"), "-device", "virtio-blk-pci,drive=d0,bootindex=5", "-device", "ide-cd,bootindex=0",
     "-device", "ide-hd,drive=d1,bootindex=-1", "-hda", "@d3.img"],
    ["-hda", "@d3.img", "-boot", "strict=on"],
], ids=lambda a: " ".join(a)[-60:])
def test_bootorder_is_what_qemu_gives_seabios(args: list[str], images: Path) -> None:
    argv = expand(args, images)
    config = parse_qemu_args(["-enable-kvm", *argv])
    mine = bootorder(place(config.devices), ide_units(config), strict=config.boot_strict, devices=config.devices)
    entries = mine.rstrip(b"\0").decode().split("\n") if mine else []
    assert entries == seabios_bootorder(["-enable-kvm", *argv], images)


def test_a_machine_file_places_the_same_units(images: Path) -> None:
    """YAML ``drives:``/``devices:`` go through the same specs, so the units and bootorder are the CLI's."""
    path = images / "vm.yaml"
    path.write_text(f"""kernel: /etc/hostname
drives:
  - {{id: d0, file: {images}/d0.img, format: raw, if: none}}
  - "if=none,id=c0,media=cdrom"
devices:
  - {{type: ide-hd, drive: d0, bootindex: 2}}
  - {{type: ide-cd, drive: c0, bus: ide.0, bootindex: 1}}
""")
    mine = load_yaml(path)
    cli = parse_qemu_args(["-enable-kvm", "-kernel", "/etc/hostname", *expand(
        [*none_drives("d0"), "-drive", "if=none,id=c0,media=cdrom", "-device", "ide-hd,drive=d0,bootindex=2",
         "-device", "ide-cd,drive=c0,bus=ide.0,bootindex=1"], images)])

    def shape(c: MachineConfig) -> list:
        return [(u.bus, u.unit, u.kind, u.drive.id) for u in ide_units(c)]
    assert shape(mine) == shape(cli) == [(0, 0, "cd", "c0"), (1, 0, "hd", "d0")]
    assert bootorder(place(mine.devices), ide_units(mine), devices=mine.devices) == \
        b"/pci@i0cf8/ide@1,1/drive@0/disk@0\n/pci@i0cf8/ide@1,1/drive@1/disk@0\0"


def qemu_query_block(args: list[str]) -> list[dict]:
    p = subprocess.run([QEMU, *BASE, "-S", "-qmp", "stdio", *args], capture_output=True, timeout=60, text=True,
                       input='{"execute":"qmp_capabilities"}\n{"execute":"query-block"}\n{"execute":"quit"}\n')
    replies = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return next(r["return"] for r in replies if isinstance(r.get("return"), list))


@pytest.mark.kvm_host
def test_query_block_names_device_units_as_qemu_does(images: Path) -> None:
    from kvmpy.machine import Machine

    # (legacy units' /machine/unattached/device[N] depends on every device QEMU made before; not compared)
    argv = expand([*none_drives("d0"),
                   "-drive", "if=none,id=c0,media=cdrom", "-device", "ide-hd,drive=d0,id=disk0",
                   "-device", "ide-cd,drive=c0,id=cd0,bus=ide.0,unit=1", "-device", "ide-cd,bus=ide.1"], images)

    def shape(entries: list[dict]) -> set:
        return {(e["device"], e.get("qdev"), e["removable"], e.get("tray_open"), "inserted" in e) for e in entries}
    theirs = shape(qemu_query_block(argv))  # before kvmpy opens (and locks) the images
    machine = Machine(parse_qemu_args(["-enable-kvm", *argv]), console=BufferBackend())
    try:
        ctx = Context(machine)
        assert shape(query_block(ctx)) == theirs
        ide = machine.board.devices["piix3-ide"]  # QEMU's default serials count units across both buses
        assert [(b, u, ide.channels[b].units[u].serial) for b, u in ((0, 1), (1, 0), (1, 1))] == \
            [(0, 1, "QM00002"), (1, 0, "QM00003"), (1, 1, "QM00004")]
        eject(ctx, id="cd0")  # a -device unit by its own id, as in QEMU
        with pytest.raises(QmpError, match="not found"):
            eject(ctx, id="c0")
    finally:
        machine.close()


@pytest.mark.kvm_host
def test_a_repeated_bootindex_is_refused_with_kernel_too(images: Path, capsys) -> None:
    """QEMU checks bootindex when it sets the property, whatever boots; kvmpy's -kernel boots check it too."""
    from tests.guests.build import build_guest

    argv = expand([*none_drives("d0", "d1"), "-device", "ide-hd,drive=d0,bootindex=1",
                   "-device", "virtio-blk-pci,drive=d1,bootindex=1"], images)
    assert main(["-enable-kvm", "-kernel", str(build_guest("hello")), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith(qemu_error(argv)), err


@pytest.mark.kvm_host
def test_a_blockdev_node_backs_a_unit(images: Path) -> None:
    from kvmpy.machine import Machine

    (images / "big.img").write_bytes(bytes(3 << 20))
    argv = expand(["-blockdev", "driver=raw,node-name=r0,file.driver=file,file.filename=@big.img",
                   "-device", "ide-hd,drive=r0,bus=ide.0,serial=NODE"], images)
    machine = Machine(parse_qemu_args(["-enable-kvm", *argv]), console=BufferBackend())
    try:
        unit = machine.board.devices["piix3-ide"].channels[0].units[0]
        assert (unit.kind, unit.sectors(), unit.serial) == ("hd", (3 << 20) // 512, "NODE")
    finally:
        machine.close()

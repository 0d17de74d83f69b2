"""The ``kvmpy`` command: QEMU-compatible flags, or ``kvmpy run FILE.yaml``; both give one MachineConfig.

Exit statuses follow QEMU: the guest decides (isa-debug-exit, poweroff = 0),
1 for a VM that fails at run time, and 2 for a usage mistake, which is always
one line on stderr without a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from kvmpy.version import __version__
from kvmpy import config_devices, qemu_opts
from kvmpy.display.options import parse_display, parse_vnc
from kvmpy.display.options import is_web_display, parse_web
from kvmpy.config import (BOARDS, ConfigError, MachineConfig, board_named, debug_exit_of, load_yaml, parse_int,
                          parse_size, parse_trace, shown)

log = logging.getLogger("kvmpy")

USAGE = """\
usage: kvmpy [QEMU-style options]        run a VM described on the command line
       kvmpy run MACHINE.yaml [options]  run a VM described in a YAML file
       kvmpy initrd ...                  build an initramfs (see kvmpy initrd --help)
       kvmpy debian-image [...]          build an installed Debian 12 disk (see kvmpy debian-image --help)

Options (same meaning as in qemu-system-x86_64 / qemu-system-riscv64):
  -enable-kvm, -accel kvm|tcg   accelerator (x86 needs kvm; riscv64 runs on tcg)
  -accel tcg,tier=py|native     riscv64: the TCG backend, generated Python or x86-64 machine code
  -machine pc|virt, -M          machine type (virt = riscv64 TCG fallback); x86 Linux kernels also
                                take linux-boot=bzimage|pvh (pvh: decompress the bzImage on the host)
  -cpu MODEL                    x86: qemu64 (the default, as in QEMU), kvm64, host or max (every feature
                                KVM supports); riscv64: rv64; -cpu help lists them
  -m [size=]SIZE[,slots=N,maxmem=SIZE]  RAM, e.g. 512, 512M, 2G (plain numbers are MiB); slots/maxmem
                                reserve room for memory hotplug
  -smp N                        number of vCPUs
  -kernel FILE                  x86: multiboot kernel, Linux bzImage or PVH vmlinux (without it, x86 boots
                                its BIOS, SeaBIOS, as QEMU does); riscv64: the stage after OpenSBI (ELF or
                                raw, e.g. U-Boot or a Linux Image), or with -bios none an ELF run in M-mode
  -initrd FILE                  Linux initramfs, or multiboot modules (comma-separated)
  -append CMDLINE               kernel command line
  -bios FILE                    x86: the BIOS image (default bios-256k.bin, Debian's seabios package);
                                riscv64: default (OpenSBI fw_dynamic, also without -bios, as in QEMU), none
                                (no firmware: -kernel is an ELF run in M-mode) or FILE (e.g. OpenSBI
                                fw_jump.bin, loaded at 0x80000000; -kernel then at 0x80200000)
  -L DIR                        x86: look for BIOS images in DIR first
  -icount shift=N               riscv64: deterministic guest time, 2**N ns per instruction (default: real time)
  -nographic                    no display; serial on stdio (Ctrl-A x quits)
  -display none                 no display
  -display vnc=[HOST]:N[,...]   as -vnc
  -display web[=[HOST]:PORT]    kvmpy only: a browser console (noVNC) on http://HOST:PORT/
                                (default 127.0.0.1:6080); with -vnc it shows that server's screen
  -vnc [HOST]:N[,password=on]   a VNC console on TCP port 5900+N (HOST defaults to 127.0.0.1, not every
                                interface as in QEMU); password=on: set one with change-vnc-password
  -vga std|none                 std: QEMU's standard VGA (Bochs VBE) at PCI slot 2; none (kvmpy's default)
  -serial stdio|file:PATH|null|none|chardev:ID  where COM1 goes (none: no COM1 at all)
  -nodefaults                   no default devices
  -no-reboot                    exit instead of rebooting
  -device DRIVER[,id=ID][,prop=value...]   a device; -device help lists the drivers, -device DRIVER,help
                                its properties (isa-debug-exit[,iobase=0xf4][,iosize=0x04]: the exit port)
  -drive file=FILE[,if=virtio|ide|none][,format=raw|qcow2][,media=disk|cdrom][,id=ID][,index=N]
         [,cache=writeback|none|writethrough|directsync|unsafe][,readonly=on][,snapshot=on][,aio=...]
                                a disk image; if=virtio also adds its virtio-blk-pci device
  -blockdev driver=qcow2,node-name=N,file.driver=file,file.filename=FILE  (or JSON '{"driver": ...}')
  -hda/-hdb/-hdc/-hdd FILE, -cdrom FILE, or FILE alone   an IDE disk/CD at index 0..3 (PIIX IDE at 00:01.1)
  -boot [order=]c|d|n...[,menu=on|off]   firmware boot order (disk, CD, network) and SeaBIOS's boot menu
  -netdev user|tap|stream|socket|dgram,id=ID[,...]   a network backend (-netdev help)
  -nic TYPE,model=virtio-net-pci[,mac=ADDR][,...]  a netdev and its NIC in one option
  -chardev null|stdio|file|pty|socket,id=ID[,path=P|host=H,port=N][,server=on][,wait=off]
  -object TYPE,id=ID[,...]      memory and rng backends (-object help)
  -name NAME                    VM name
  -S                            start with the vCPUs paused
  -d ITEMS, -D FILE             QEMU log items the machine honours (virt: in_asm,exec,cpu,int,op,
                                out_asm,nochain,tb_stats; pc under KVM: none) and their file
  -qmp unix:PATH,server[,wait=off] | tcp:HOST:PORT,server[,wait=off]
  -mon chardev=ID,mode=control  QMP on a -chardev socket,...,server=on (as libvirt starts QEMU)
  -incoming tcp:HOST:PORT|unix:PATH|exec:CMD|file:PATH|defer   wait for a migration (file: restores a snapshot)
  -loadvm TAG                   start from the VM snapshot TAG in the qcow2 disks (HMP savevm made it)
  -h, -help, --help             this text
  -version, --version           version

Debugging: KVMPY_LOG=debug (or info) logs to stderr, including unhandled ports.
"""

# Options that take an argument and those that do not.
_WITH_ARG = {"-accel", "-machine", "-M", "-cpu", "-m", "-smp", "-kernel", "-initrd", "-append", "-serial",
             "-device", "-name", "-display", "-bios", "-d", "-D", "-qmp", "-monitor", "-vga", "-net",
             "-parallel", "-incoming", "-L", "-vnc", "-drive", "-blockdev", "-netdev", "-chardev", "-object",
             "-hda", "-hdb", "-hdc", "-hdd", "-cdrom", "-nic", "-mon", "-boot", "-icount", "-loadvm"}
# The device options gathered into MachineConfig tuples, and the field each one fills.
_SPEC_OPTIONS = {"-drive": "drives", "-blockdev": "blockdevs", "-netdev": "netdevs", "-chardev": "chardevs",
                 "-object": "objects", "-device": "devices"}
# -hda..-hdd and -cdrom: QEMU's drive_add(IF_DEFAULT, index, FILE, media)
_LEGACY_DRIVES = {"-hda": (0, "disk"), "-hdb": (1, "disk"), "-hdc": (2, "disk"), "-hdd": (3, "disk"),
                  "-cdrom": (2, "cdrom")}
_FLAGS = {"-enable-kvm", "-nographic", "-nodefaults", "-no-reboot", "-S", "-no-user-config",
          "-no-shutdown", "-snapshot"}
# Options accepted only with values that ask for nothing we would have to add.
_ONLY_NONE = {"-monitor": ("none",), "-net": ("none",), "-parallel": ("none",)}
# -vga types QEMU 7.2 knows; kvmpy builds std (kvmpy.devices.vga) and none.
_VGA_TYPES = ("none", "std", "cirrus", "vmware", "qxl", "xenfb", "tcx", "cg3", "virtio")


RAM_NAME = "pc.ram"  # named as in QEMU's "cannot set up guest memory 'pc.ram'"
MAX_MESSAGE = 400  # characters of one error line


PC_BOOT_DEVICES = "abcdn"  # -boot order= letters the PC's CMOS boot bytes can name


def _boot_letters(text: str) -> str:
    """QEMU's validate_bootdevices: drive letters a..p, each once."""
    for i, c in enumerate(text):
        if not "a" <= c <= "p":
            raise UsageError(f"Invalid boot device {shown(c)}")
        if c in text[:i]:
            raise UsageError(f"Boot device '{c}' was given twice")
    return text


def _pc_boot_letters(text: str) -> str:
    """The pc machine's own check, made after the generic one: the letters its CMOS boot bytes can name."""
    for c in text:
        if c not in PC_BOOT_DEVICES:
            raise UsageError(f"Invalid boot device for PC: '{c}'")
    return text


def _boot_integer(text: str, key: str, lo: int, invalid: str) -> int:
    try:
        value = int(text.strip(), 0) if 0 < len(text) <= 40 else None
    except ValueError:
        value = None
    if value is None:
        raise UsageError(f"Parameter 'boot.{key}' expects integer")
    if not lo <= value <= 0xFFFF:
        raise UsageError(invalid)
    return value


def boot_options(val: str) -> dict[str, Any]:
    """-boot [order=]LETTERS[,once=LETTERS][,menu=on|off][,strict=on|off][,splash-time=MS][,reboot-timeout=MS]
    as QEMU's pc takes them, with its messages; other -boot keys (splash=) are refused by name."""
    bopts = qemu_opts.parse_opts(val, "-boot", "order", flags=False)
    known = ("order", "once", "menu", "strict", "splash-time", "reboot-timeout")
    unknown = [k for k in bopts.keys() if k not in known]
    if unknown or bopts.help or bopts.id is not None:
        raise bopts.fail(f"Invalid parameter {shown(unknown[0] if unknown else 'id', 40)}")
    out: dict[str, Any] = {}
    letters = {key: _boot_letters(bopts.get(key)) for key in ("order", "once") if bopts.get(key) is not None}
    for key, text in letters.items():
        out[f"boot_{key}"] = _pc_boot_letters(text)
    if bopts.get("menu") is not None:
        out["boot_menu"] = qemu_opts.parse_bool(bopts.get("menu"), "menu", "-boot", val)
    if bopts.get("strict") is not None:
        try:
            out["boot_strict"] = qemu_opts.parse_bool(bopts.get("strict"), "boot.strict")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    if bopts.get("splash-time") is not None:  # QEMU's messages, comma without a space included
        out["boot_splash_time"] = _boot_integer(bopts.get("splash-time"), "splash-time", 0,
                                                "splash-time is invalid,it should be a value between 0 and 65535")
    if bopts.get("reboot-timeout") is not None:
        out["boot_reboot_timeout"] = _boot_integer(
            bopts.get("reboot-timeout"), "reboot-timeout", -1,
            "reboot timeout is invalid,it should be a value between -1 and 65535")
    return out


class UsageError(ConfigError):
    pass


def _cpu_help() -> str:
    from kvmpy.vcpu.cpu_models import DEFAULT_MODEL, MODELS

    lines = ["Available CPUs (x86_64, -machine pc):"]
    lines += [f"  {m.name:<8} {m.description}" for m in MODELS.values()]
    lines += [f"(default: {DEFAULT_MODEL}; QEMU's other model names are taken as host)",
              "Available CPUs (riscv64, -machine virt):", "  rv64     RV64GC"]
    return "\n".join(lines) + "\n"


class HelpRequested(Exception):
    """``-device help`` and friends: ``text`` goes to stdout and the command exits 0, as in QEMU."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _device_option(opt: str, val: str) -> object:
    """The spec of one -device/-drive/-netdev/-chardev/-object/-blockdev argument; help raises HelpRequested."""
    if opt != "-blockdev" and opt != "-drive":
        opts = qemu_opts.parse_opts(val, opt, config_devices.IMPLIED_KEYS[opt],
                                    json_form=opt in config_devices.JSON_OPTIONS)
        if opts.help:
            what = opts.get("driver") if opt == "-device" else None
            if what is not None and config_devices.DEVICE_DRIVERS.get(what) is None and what not in \
                    {a for d in config_devices.DEVICE_DRIVERS.values() for a in d.aliases}:
                raise opts.fail(f"unsupported device {shown(what, 40)}: not a valid device model name")
            raise HelpRequested(config_devices.help_text(opt, what))
    return config_devices.spec_from_text(opt, val)


def one_line(message: str) -> str:
    """``message`` fit for one stderr line: control characters escaped, shortened."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    if len(out) <= MAX_MESSAGE:
        return out
    half = MAX_MESSAGE // 2  # keep both ends: what was given, and (at the end) what is wrong with it
    return f"{out[:half]}...{out[-half:]}"


def _opts(text: str, what: str) -> tuple[str, dict[str, str]]:
    """Split QEMU's ``value,key=val,...`` syntax."""
    parts = text.split(",")
    head = parts[0]
    kv = {}
    for p in parts[1:]:
        if not p:
            continue
        k, sep, v = p.partition("=")
        kv[k] = v if sep else "on"
    if "=" in head:
        k, _, v = head.partition("=")
        kv[k] = v
        head = ""
    return head, kv


def _monitor_chardev(mon: qemu_opts.Opts, chardevs: list) -> "config_devices.ChardevSpec":
    """The -chardev a ``-mon chardev=ID,mode=control`` serves QMP on."""
    unknown = [k for k in mon.keys() if k not in ("chardev", "mode", "pretty")]
    if unknown or mon.help:
        raise mon.fail(f"Invalid parameter {shown(unknown[0] if unknown else 'help', 40)}")
    if mon.get("mode", "readline") != "control":
        raise mon.fail("kvmpy has no human monitor (HMP) on a chardev: use mode=control (QMP)")
    if qemu_opts.parse_bool(mon.get("pretty", "off"), "pretty", mon.option, mon.text):
        raise mon.fail("pretty=on is not supported (kvmpy's QMP replies are one line each)")
    name = mon.get("chardev")
    for c in chardevs:
        if c.id == name:
            return c
    raise mon.fail(f"chardev {shown(name, 40)} not found")


def _qmp_endpoint(mon: qemu_opts.Opts, c: "config_devices.ChardevSpec") -> str:
    """The -qmp text of a listening socket chardev: QMP's own server then owns it (0600 unix sockets)."""
    if c.backend != "socket" or not c.server:
        raise mon.fail(f"kvmpy serves QMP on a listening socket: use -chardev socket,id={c.id},...,server=on")
    where = f"unix:{c.path}" if c.path is not None else f"tcp:{c.host}:{c.port}"
    if "," in where:
        raise mon.fail(f"the socket address {shown(where, 60)} contains a comma")
    return f"{where},server" + ("" if c.wait else ",wait=off")


def parse_qemu_args(argv: Sequence[str]) -> MachineConfig:
    """QEMU-style argv to a (frozen, not yet validated) MachineConfig; UsageError for what is wrong."""
    cfg: dict = {"qmp": []}  # MachineConfig fields collected here, the config is built once at the end
    args = list(argv)
    i = 0
    machine = None
    accel = None
    nographic = False
    serial_set = False
    nodefaults = False
    specs: dict[str, list] = {name: [] for name in _SPEC_OPTIONS.values()}
    nics: list = []
    vga = "none"  # kvmpy stays headless unless asked (QEMU's default would be std)
    mons: list[qemu_opts.Opts] = []
    while i < len(args):
        raw = args[i]
        opt = "-" + raw.lstrip("-") if raw.startswith("--") and raw not in ("--help", "--version") else raw
        if not opt.startswith("-") or opt == "-":
            # QEMU: an argument that is not an option is a disk image, as -hda
            specs["drives"].append(config_devices.legacy_drive("", raw, 0))
            i += 1
            continue
        if opt in _FLAGS:
            i += 1
            if opt == "-enable-kvm":
                accel = "kvm"
            elif opt == "-nographic":
                nographic = True
            elif opt == "-no-reboot":
                cfg["no_reboot"] = True
            elif opt == "-nodefaults":
                nodefaults = True
            elif opt == "-S":
                cfg["start_paused"] = True
            elif opt in ("-no-shutdown", "-snapshot"):
                raise UsageError(f"option {opt} is not supported by kvmpy")
            continue
        if opt not in _WITH_ARG:
            raise UsageError(f"unsupported option {shown(raw)} (kvmpy --help lists the supported ones)")
        if i + 1 >= len(args):
            raise UsageError(f"option {shown(raw)} needs an argument")
        val = args[i + 1]
        i += 2
        if opt == "-vga":
            if val not in _VGA_TYPES:
                raise UsageError(f"unknown vga type: {shown(val)}")
            if val not in ("std", "none"):
                raise UsageError(f"-vga {val} is not supported by kvmpy (std or none)")
            vga = val
            continue
        if opt in _ONLY_NONE:
            if val not in _ONLY_NONE[opt]:
                raise UsageError(f"{opt} {shown(val)} is not supported (only '{opt} none')")
            continue
        if opt == "-accel":
            head, kv = _opts(val, "accel")
            accel = head or kv.get("accel", "")
            if accel not in ("kvm", "tcg"):
                raise UsageError(f"unsupported accelerator {shown(accel)} (kvm or tcg)")
            if "tier" in kv:
                if accel != "tcg":
                    raise UsageError(f"-accel {shown(val)}: tier= is a TCG option")
                cfg["tcg_tier"] = kv["tier"]
        elif opt in ("-machine", "-M"):
            head, kv = _opts(val, "machine")
            machine = head or kv.pop("type", "")
            if "accel" in kv:
                accel = kv.pop("accel")
            kv.pop("graphics", None)
            if "linux-boot" in kv:  # kvmpy's own: how a bzImage is entered (auto, bzimage, pvh)
                cfg["linux_boot"] = kv.pop("linux-boot")
            if kv:
                raise UsageError(f"unsupported -machine option(s): {', '.join(map(shown, kv))}")
        elif opt == "-boot":
            cfg.update(boot_options(val))
        elif opt == "-cpu":
            if val in ("help", "?"):
                raise HelpRequested(_cpu_help())
            model, _, flags = val.partition(",")
            if flags:
                raise UsageError(f"-cpu {shown(val, 60)}: kvmpy takes a model name only, no feature flags "
                                 f"(-cpu help lists the models)")
            cfg["cpu"] = model
        elif opt == "-m":
            mopts = qemu_opts.parse_opts(val, opt, "size", flags=False)
            unknown = [k for k in mopts.keys() if k not in ("size", "slots", "maxmem")]
            if unknown or mopts.help or mopts.id is not None:
                raise mopts.fail(f"Invalid parameter {shown(unknown[0] if unknown else 'id', 40)}")
            cfg["memory"] = parse_size(mopts.get("size", ""), "memory size")
            if mopts.get("slots") is not None:
                cfg["memory_slots"] = qemu_opts.parse_number(mopts.get("slots"), "slots", opt, val, hi=1 << 32)
            if mopts.get("maxmem") is not None:
                cfg["max_memory"] = parse_size(mopts.get("maxmem"), "maxmem")
        elif opt == "-smp":
            head, kv = _opts(val, "smp")
            n = head or kv.pop("cpus", "1")
            for k in ("sockets", "cores", "threads", "maxcpus", "dies"):
                kv.pop(k, None)
            if kv:
                raise UsageError(f"unsupported -smp option(s): {', '.join(map(shown, kv))}")
            cfg["smp"] = parse_int(n, "-smp")
        elif opt == "-kernel":
            cfg["kernel"] = Path(val)
        elif opt == "-initrd":
            cfg["initrd"] = Path(val)
        elif opt == "-append":
            cfg["append"] = val
        elif opt == "-serial":
            if serial_set:
                raise UsageError("only one -serial is supported (COM1)")
            cfg["serial"] = val
            serial_set = True
        elif opt == "-display" and is_web_display(val):
            parse_web(val)  # a mistake is one line now, before anything starts
            cfg["web"] = val
        elif opt == "-display":
            vnc = parse_display(val)[1]
            if vnc is not None:
                cfg["vnc"] = vnc
        elif opt == "-vnc":
            cfg["vnc"] = None if parse_vnc(val) is None else val
        elif opt in _SPEC_OPTIONS:
            spec = _device_option(opt, val)
            if opt == "-device" and spec.driver == "isa-debug-exit":
                cfg["debug_exit"] = debug_exit_of(spec)
            else:
                specs[_SPEC_OPTIONS[opt]].append(spec)
        elif opt == "-mon":
            mons.append(qemu_opts.parse_opts(val, opt, "chardev", flags=False))
        elif opt == "-nic":
            nic_opts = qemu_opts.parse_opts(val, opt, "type")
            if nic_opts.help:
                raise HelpRequested(config_devices.help_text("-netdev"))
            nic = config_devices.nic_from_opts(nic_opts, len(nics))
            if nic is not None:
                nics.append(nic[1])  # QEMU creates -nic cards with the machine, before any -device
                specs["netdevs"].append(nic[0])
        elif opt in _LEGACY_DRIVES:
            index, media = _LEGACY_DRIVES[opt]
            specs["drives"].append(config_devices.legacy_drive(opt, val, index, media))
        elif opt == "-name":
            head, kv = _opts(val, "name")
            cfg["name"] = head or kv.get("guest", val)
        elif opt == "-bios":
            cfg["bios"] = val
        elif opt == "-icount":
            cfg["icount"] = _icount_shift(val)
        elif opt == "-d":
            cfg["trace"] = parse_trace(val)
        elif opt == "-D":
            cfg["trace_file"] = Path(val)
        elif opt == "-qmp":
            cfg["qmp"].append(val)
        elif opt == "-incoming":
            cfg["incoming"] = val
        elif opt == "-loadvm":
            cfg["loadvm"] = val
        elif opt == "-L":
            cfg["data_dirs"] = (*cfg.get("data_dirs", ()), Path(val))
    if not serial_set:
        # As in QEMU: -nodefaults drops the default COM1; otherwise it goes to stdio.
        cfg["serial"] = "none" if nodefaults else "stdio"
    board = board_named(machine) if machine else BOARDS["pc"]
    if board is None:
        raise UsageError(f"unsupported machine type {shown(machine)} (pc, or virt for riscv64)")
    cfg["machine"], cfg["arch"] = board.machine, board.arch
    cfg["accel"] = accel or "tcg"  # QEMU's default accelerator
    if board.bios_files and "bios" not in cfg:
        cfg["bios"] = "default"  # QEMU's virt loads OpenSBI unless told -bios none (a machine file's default is none)
    if board.arch == "x86_64" and cfg["accel"] != "kvm":
        raise UsageError("x86 guests need KVM for now: add -enable-kvm (or -accel kvm)")
    specs["devices"][:0] = nics
    if vga == "std":  # QEMU creates the -vga card with the machine, before -nic cards and -device
        specs["devices"][:0] = [config_devices.DeviceSpec(driver="VGA", source="-vga std")]
    for mon in mons:  # after every -chardev: -mon may name one given later
        chardev = _monitor_chardev(mon, specs["chardevs"])
        specs["chardevs"].remove(chardev)
        cfg["qmp"].append(_qmp_endpoint(mon, chardev))
    return MachineConfig(**cfg, **{k: tuple(v) for k, v in specs.items()})


def _setup_logging() -> None:
    level = os.environ.get("KVMPY_LOG", "warning").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="kvmpy: %(levelname)s: %(message)s" if level != "DEBUG"
                        else "%(relativeCreated)8.1f %(threadName)s %(name)s: %(message)s")


def _run_config(cfg: MachineConfig) -> int:
    cfg.validate()
    if cfg.arch == "riscv64":
        return _run_riscv(cfg)
    from kvmpy.kvm.errors import KvmError
    from kvmpy.loader.errors import LoaderError
    from kvmpy.machine import Machine

    from kvmpy.memory.ramblock import RAMAllocationError

    try:
        machine = Machine(cfg)
    except (LoaderError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    except KvmError as exc:
        print(f"kvmpy: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except RAMAllocationError:  # QEMU's wording and status for a -m the host cannot reserve
        print(f"kvmpy: cannot set up guest memory {RAM_NAME!r}: {os.strerror(errno.ENOMEM)}", file=sys.stderr)
        return 1
    monitor = None
    try:
        if cfg.incoming:
            machine.migration.start_incoming(cfg.incoming)  # binds now: a bad -incoming fails here
        if cfg.loadvm is not None:
            from kvmpy.migration.savevm import SnapshotError, load_vm
            from kvmpy.monitor.snapshots import refuse_ide_disks

            try:
                refuse_ide_disks(machine)
                load_vm(machine, cfg.loadvm)  # before the vCPUs ever run, as QEMU's -loadvm
            except SnapshotError as exc:
                print(f"kvmpy: {exc}", file=sys.stderr)  # QEMU: error_report, then exit(1)
                return 1
        if cfg.qmp:
            monitor = _start_qmp(machine, cfg.qmp)
        with _quit_on_signals(machine):
            return machine.run()
    finally:
        if monitor is not None:
            monitor.close()  # after run(): the SHUTDOWN event still reaches the clients
        machine.close()


@contextmanager
def _quit_on_signals(machine) -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGINT end the VM as in QEMU: a message, SHUTDOWN (host-signal), status 0.

    The quit is requested from a new thread: the handler runs on the main thread at any
    bytecode, possibly while it holds the lock of the event queue the request goes to.
    """
    def handler(signum: int, frame) -> None:
        print(f"kvmpy: terminating on signal {signum}", file=sys.stderr, flush=True)
        threading.Thread(target=machine.lifecycle.request_quit, args=(0, "host-signal"), name="kvmpy-signal",
                         daemon=True).start()

    signums = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _start_qmp(machine, specs: list[str]):
    """Listen on every -qmp endpoint; like QEMU, wait for a first client unless each says wait=off."""
    from kvmpy.machine import qmp_commands
    from kvmpy.monitor.endpoint import parse_endpoint
    from kvmpy.monitor.server import QmpServer

    server = QmpServer(machine, [parse_endpoint(s) for s in specs], qmp_commands())
    server.start()
    waiting = [ep for ep in server.endpoints if ep.wait]
    if waiting:
        print(f"kvmpy: -qmp {waiting[0].spec}: info: waiting for connection on: {waiting[0].describe()}",
              file=sys.stderr, flush=True)
        server.wait_for_client()
    return server


def _icount_shift(val: str) -> int:
    """-icount N or -icount shift=N (QEMU's syntax; its other sub-options are not offered)."""
    head, kv = _opts(val, "shift")
    text = kv.pop("shift", head)
    if kv or text is None or not text.isdigit():
        raise UsageError(f"-icount {shown(val)}: only -icount shift=N (N = 0 to 10) is supported")
    return int(text)


def _run_riscv(cfg: MachineConfig) -> int:
    try:
        from kvmpy.boards.riscv_virt_run import run_machine
    except ImportError as exc:
        print(f"kvmpy: the riscv64 TCG fallback is not available: {exc}", file=sys.stderr)
        return 1
    from kvmpy.tcg import errors as tcg_errors

    user_errors = tuple(getattr(tcg_errors, n) for n in dir(tcg_errors)
                        if n.endswith("Error") and isinstance(getattr(tcg_errors, n), type))
    try:
        return run_machine(cfg)
    except user_errors as exc:  # type: ignore[misc]
        raise ConfigError(str(exc)) from None
    except MemoryError:  # the riscv board's RAM: the same one line as for x86
        print(f"kvmpy: cannot set up guest memory 'riscv_virt_board.ram': {os.strerror(errno.ENOMEM)}",
              file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        if not args or args[0] in ("-h", "-help", "--help"):
            print(USAGE, end="")
            return 0 if args else 2
        if args[0] in ("-version", "--version"):
            print(f"kvmpy version {__version__}")
            return 0
        if args[0] == "run":
            if len(args) < 2 or args[1] in ("-h", "--help"):
                print("usage: kvmpy run MACHINE.yaml  (the schema is in kvmpy/config.py and configs/)")
                return 0 if len(args) >= 2 else 2
            if len(args) > 2:
                raise UsageError(f"unexpected arguments after the machine file: {' '.join(args[2:])}")
            cfg = load_yaml(Path(args[1]))
        elif args[0] == "initrd":
            from kvmpy.tools.initrd import main as initrd_main
            return initrd_main(args[1:])
        elif args[0] == "debian-image":
            from kvmpy.tools.debian_image import main as debian_image_main
            return debian_image_main(args[1:])
        else:
            cfg = parse_qemu_args(args)
        return _run_config(cfg)
    except HelpRequested as wanted:
        print(wanted.text, end="")
        return 0
    except ConfigError as exc:
        print(f"kvmpy: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvmpy: terminating on signal 2", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())

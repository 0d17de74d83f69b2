"""A subset of QEMU's human monitor (HMP), reached through QMP's human-monitor-command.

Supported: info status|registers [-a]|cpus|mtree [-f]|pci|block [dev]|blockstats|network|kvm|name|version,
block_resize, set_link, sendkey, screendump, info vnc,
savevm [tag], loadvm tag, delvm tag, info snapshots (VM snapshots in qcow2 images),
x and xp memory dumps (``/NFU``: count, format x d u o t c, unit b h w g),
stop, cont (c), system_reset, system_powerdown, quit (q), help.
Output follows QEMU's layout and ends lines with CRLF as QEMU's monitor does.
As in QEMU, a failing HMP command is not a QMP error: its message is the output.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from typing import TYPE_CHECKING

from kvmpy.kvm import abi
from kvmpy.memory.guest_memory import GuestMemoryError
from kvmpy.memory.region import MemoryRegion, RegionKind
from kvmpy.monitor.block import hmp_block_resize, info_block_text, info_blockstats_text
from kvmpy.monitor.display import hmp_screendump, hmp_sendkey, info_vnc_text
from kvmpy.monitor.context import PACKAGE, QEMU_VERSION
from kvmpy.monitor.net import hmp_set_link, info_network_text
from kvmpy.monitor.memory import info_memdev_text, info_memory_devices_text
from kvmpy.monitor.pci import info_pci_text
from kvmpy.monitor.protocol import QmpError
from kvmpy.monitor.snapshots import hmp_delvm, hmp_loadvm, hmp_savevm, info_snapshots_text

if TYPE_CHECKING:
    from kvmpy.monitor.context import Context

MAX_DUMP = 64 * 1024  # bytes one x/xp may print
PAGE_MASK = ~0xFFF
PHYS_MASK = (1 << 52) - 1
_FMT = re.compile(r"^/(\d{0,9})([xduotc]?)([bhwg]?)$", re.ASCII)  # a count of 10+ digits is never valid
_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}

HELP = """\
block_resize device size -- resize a block image
cont|c -- resume emulation
delvm tag -- delete a VM snapshot from its tag
help|? -- show this list
info status|registers [-a]|cpus|mtree [-f]|pci|block|blockstats|network|vnc|snapshots|kvm|name|version -- show machine state
loadvm tag -- restore a VM snapshot from its tag
quit|q -- quit the emulator
savevm [tag] -- save a VM snapshot. If no tag is provided, a new snapshot is created
screendump [-f ppm|png] filename -- save the screen as an image
sendkey keys [hold_ms] -- send keys to the guest (e.g. ctrl-alt-f1)
set_link name on|off -- change the link status of a network adapter
stop -- stop emulation
system_powerdown -- send system power down event
system_reset -- reset the system
x /fmt addr -- virtual memory dump starting at 'addr'
xp /fmt addr -- physical memory dump starting at 'addr'
"""


class HmpError(Exception):
    pass


def run_hmp(ctx: "Context", line: str, cpu_index: int) -> str:
    words = line.split()
    if not words:
        return ""
    try:
        out = _dispatch(ctx, words, cpu_index)
    except (HmpError, QmpError) as exc:
        out = f"Error: {exc}\n"
    return out.replace("\r\n", "\n").replace("\n", "\r\n")


def _dispatch(ctx: "Context", words: list[str], cpu: int) -> str:
    name, args = words[0], words[1:]
    simple = {"stop": "stop", "cont": "cont", "c": "cont", "system_reset": "system_reset",
              "system_powerdown": "system_powerdown", "quit": "quit", "q": "quit"}
    if name in simple:
        if ctx.commands is None:
            raise HmpError("no QMP command table to run this with")
        ctx.commands.dispatch(ctx, simple[name], {})  # the QMP command of the same meaning
        return ""
    if name in ("help", "?"):
        return HELP
    if name == "info":
        return _info(ctx, args, cpu)
    if name in ("x", "xp"):
        return _dump(ctx, name == "xp", args, cpu)
    if name == "block_resize":
        return hmp_block_resize(ctx, args)
    if name == "set_link":
        return hmp_set_link(ctx, args)
    if name == "sendkey":
        return hmp_sendkey(ctx, args)
    if name == "screendump":
        return hmp_screendump(ctx, args)
    if name == "savevm":
        return hmp_savevm(ctx, args)
    if name == "loadvm":
        return hmp_loadvm(ctx, args)
    if name == "delvm":
        return hmp_delvm(ctx, args)
    return f"unknown command: '{name}'\n"


def _info(ctx: "Context", args: list[str], cpu: int) -> str:
    m = ctx.machine
    if not args:
        return "info status|registers|cpus|mtree|pci|block|blockstats|kvm|name|version\n"
    what = args[0]
    if what == "status":
        state = m.lifecycle.state.value
        if state == "running":
            return "VM status: running\n"
        return "VM status: paused\n" if state == "paused" else f"VM status: paused ({state})\n"
    if what == "registers":
        indices = range(len(m.board.vcpus)) if "-a" in args[1:] else [cpu]
        with m.lifecycle.vcpus_parked():
            parts = [f"\nCPU#{i}\n" + register_text(m.board.vcpus[i]) for i in indices]
        return "".join(parts)
    if what == "cpus":
        return "".join(f"{'*' if i == cpu else ' '} CPU #{i}: thread_id={t.native_id or 0}\n"
                       for i, t in enumerate(m.board.threads))
    if what == "mtree":
        return _mtree_flat(m) if "-f" in args[1:] else _mtree(m)
    if what == "pci":
        return info_pci_text(ctx)
    if what == "vnc":
        return info_vnc_text(ctx)
    if what == "block":
        return info_block_text(ctx, args[1] if len(args) > 1 else None)
    if what == "blockstats":
        return info_blockstats_text(ctx)
    if what == "network":
        return info_network_text(ctx)
    if what == "memory-devices":
        return info_memory_devices_text(ctx)
    if what == "memdev":
        return info_memdev_text(ctx)
    if what == "snapshots":
        return info_snapshots_text(ctx, args[1:])
    if what == "kvm":
        return "kvm support: enabled\n"
    if what == "name":
        return f"{m.config.name}\n" if m.config.name is not None else ""
    if what == "version":
        v = QEMU_VERSION
        return f"{v['major']}.{v['minor']}.{v['micro']} ({PACKAGE})\n"
    return f"info: unknown or unsupported item '{what}'\n"


# ---- info registers ---------------------------------------------------------
def _seg_flags(s) -> int:
    return ((s.type << 8) | (s.s << 12) | (s.dpl << 13) | (s.present << 15) | (s.avl << 20)
            | (s.l << 21) | (s.db << 22) | (s.g << 23))


def register_text(vcpu) -> str:
    """QEMU's x86 register dump layout: 64-bit names in long mode, 32-bit ones otherwise."""
    r, s = vcpu.regs(), vcpu.sregs()
    try:
        halted = int(vcpu.get_mp_state() == abi.MP_STATE_HALTED)
    except Exception:  # MP state is optional in some KVMs
        halted = 0
    long_mode = bool(s.cs.l and (s.efer & (1 << 10)))
    fl = r.rflags
    flag_text = "".join(c if fl & bit else "-" for c, bit in
                        (("D", 1 << 10), ("O", 1 << 11), ("S", 1 << 7), ("Z", 1 << 6), ("A", 1 << 4),
                         ("P", 1 << 2), ("C", 1)))
    cpl = s.ss.dpl if s.cr0 & 1 else 0
    tail = f"RFL={fl:08x} [{flag_text}] CPL={cpl} II=0 A20=1 SMM=0 HLT={halted}\n"
    if long_mode:
        names = [("RAX", r.rax), ("RBX", r.rbx), ("RCX", r.rcx), ("RDX", r.rdx), ("RSI", r.rsi), ("RDI", r.rdi),
                 ("RBP", r.rbp), ("RSP", r.rsp), ("R8 ", r.r8), ("R9 ", r.r9), ("R10", r.r10), ("R11", r.r11),
                 ("R12", r.r12), ("R13", r.r13), ("R14", r.r14), ("R15", r.r15)]
        out = ["".join(f"{n}={v:016x}" + ("\n" if i % 4 == 3 else " ") for i, (n, v) in enumerate(names))]
        out.append(f"RIP={r.rip:016x} " + tail)
        seg = "{:<3}={:04x} {:016x} {:08x} {:08x} DPL={}\n"
        table = "{:<3}=     {:016x} {:08x}\n"
    else:
        names = [("EAX", r.rax), ("EBX", r.rbx), ("ECX", r.rcx), ("EDX", r.rdx), ("ESI", r.rsi), ("EDI", r.rdi),
                 ("EBP", r.rbp), ("ESP", r.rsp)]
        out = ["".join(f"{n}={v & 0xFFFFFFFF:08x}" + ("\n" if i % 4 == 3 else " ") for i, (n, v) in enumerate(names))]
        out.append(f"EIP={r.rip & 0xFFFFFFFF:08x} " + tail.replace("RFL=", "EFL="))
        seg = "{:<3}={:04x} {:08x} {:08x} {:08x}" + (" DPL={}\n" if s.cr0 & 1 else "\n")
        table = "{:<3}=     {:08x} {:08x}\n"
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        sg = getattr(s, name)
        out.append(seg.format(name.upper(), sg.selector, sg.base if long_mode else sg.base & 0xFFFFFFFF,
                              sg.limit, _seg_flags(sg), sg.dpl))
    out.append(table.format("GDT", s.gdt.base, s.gdt.limit))
    out.append(table.format("IDT", s.idt.base, s.idt.limit))
    if long_mode:
        out.append(f"CR0={s.cr0:08x} CR2={s.cr2:016x} CR3={s.cr3:016x} CR4={s.cr4:08x}\n")
    else:
        out.append(f"CR0={s.cr0:08x} CR2={s.cr2 & 0xFFFFFFFF:08x} CR3={s.cr3 & 0xFFFFFFFF:08x} CR4={s.cr4:08x}\n")
    out.append(f"EFER={s.efer:016x}\n")
    return "".join(out)


# ---- info mtree -------------------------------------------------------------
def _region_type(region: MemoryRegion) -> str:
    if region.kind is RegionKind.RAM:
        return "rom" if region.readonly else "ram"
    if region.kind is RegionKind.ALIAS and region.alias_of is not None:
        return _region_type(region.alias_of)
    return "i/o"


def _mtree(m) -> str:
    lines = ["address-space: memory\n"]

    def walk(region: MemoryRegion, base: int, prio: int, depth: int) -> None:
        end = base + region.size - 1
        head = f"{'  ' * depth}{base:016x}-{end:016x} (prio {prio}, {_region_type(region)}): "
        if region.kind is RegionKind.ALIAS and region.alias_of is not None:
            lo = region.alias_offset
            lines.append(head + f"alias {region.name} @{region.alias_of.name} {lo:016x}-{lo + region.size - 1:016x}\n")
        else:
            lines.append(head + region.name + "\n")
        if depth < 16:
            for sub in sorted(region.subregions, key=lambda s: (s.offset, -s.priority)):
                walk(sub.region, base + sub.offset, sub.priority, depth + 1)

    walk(m.board.root, 0, 0, 1)
    lines.append("\naddress-space: I/O\n")
    lines.append(f"  {0:016x}-{0xFFFF:016x} (prio 0, i/o): io\n")
    for r in m.board.pio.ranges():
        lines.append(f"    {r.base:016x}-{r.end - 1:016x} (prio 0, i/o): {r.name or type(r.device).__name__}\n")
    return "".join(lines)


def _mtree_flat(m) -> str:
    lines = ["FlatView #0\n", ' AS "memory", root: system\n', " Root memory region: system\n"]
    for r in m.board.address_space.flatview.ranges:
        kind = _region_type(r.region)
        extra = f" @{r.offset:016x}" if r.offset else ""
        lines.append(f"  {r.addr:016x}-{r.end - 1:016x} (prio 0, {kind}): {r.region.name}{extra}\n")
    return "".join(lines)


# ---- x / xp -----------------------------------------------------------------
def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise HmpError(f"invalid address '{text[:40]}' (a number such as 0x200000)") from None


def translate(vcpu, memory, va: int) -> int | None:
    """Walk the guest page tables like the MMU (4-level, PAE or 32-bit); None if not mapped."""
    s = vcpu.sregs()
    if not s.cr0 & (1 << 31):  # paging off: linear == physical
        return va & 0xFFFFFFFF if not s.efer & (1 << 10) else va

    def entry(addr: int, size: int = 8) -> int:
        return int.from_bytes(memory.read(addr, size), "little")

    try:
        if s.efer & (1 << 10):  # long mode: PML4 -> PDPT -> PD -> PT
            table = s.cr3 & PAGE_MASK & PHYS_MASK
            for level, shift in enumerate((39, 30, 21, 12)):
                e = entry(table + ((va >> shift) & 0x1FF) * 8)
                if not e & 1:
                    return None
                if level in (1, 2) and e & 0x80:  # 1 GiB or 2 MiB page
                    mask = (1 << shift) - 1
                    return (e & PHYS_MASK & ~mask & ~0xFFF) | (va & mask) if level == 1 else \
                        (e & PHYS_MASK & ~0x1FFFFF) | (va & 0x1FFFFF)
                table = e & PHYS_MASK & PAGE_MASK
            return table | (va & 0xFFF)
        va &= 0xFFFFFFFF
        if s.cr4 & (1 << 5):  # PAE: PDPT (4 entries) -> PD -> PT
            e = entry((s.cr3 & ~0x1F & 0xFFFFFFFF) + ((va >> 30) & 3) * 8)
            if not e & 1:
                return None
            e = entry((e & PHYS_MASK & PAGE_MASK) + ((va >> 21) & 0x1FF) * 8)
            if not e & 1:
                return None
            if e & 0x80:
                return (e & PHYS_MASK & ~0x1FFFFF) | (va & 0x1FFFFF)
            e = entry((e & PHYS_MASK & PAGE_MASK) + ((va >> 12) & 0x1FF) * 8)
            return (e & PHYS_MASK & PAGE_MASK) | (va & 0xFFF) if e & 1 else None
        e = entry((s.cr3 & 0xFFFFF000) + (va >> 22) * 4, 4)  # 32-bit: PD -> PT
        if not e & 1:
            return None
        if e & 0x80 and s.cr4 & (1 << 4):
            return (e & 0xFFC00000) | (va & 0x3FFFFF)
        e = entry((e & 0xFFFFF000) + ((va >> 12) & 0x3FF) * 4, 4)
        return (e & 0xFFFFF000) | (va & 0xFFF) if e & 1 else None
    except GuestMemoryError:
        return None


def _format_value(fmt: str, size: int, v: int) -> str:
    bits = size * 8
    if fmt == "x":
        return f"0x{v:0{bits // 4}x}"
    if fmt == "o":
        return f"{'0' + format(v, 'o') if v else '0':>{(bits + 2) // 3}}"
    if fmt == "u":
        return f"{v:>{(bits * 10 + 32) // 33}}"
    if fmt == "d":  # QEMU loads narrower units zero-extended: only 8-byte values show a sign
        sv = v - (1 << 64) if bits == 64 and v >> 63 else v
        return f"{sv:>{(bits * 10 + 32) // 33}}"
    if fmt == "t":
        return format(v, f"0{bits}b")
    ch = v & 0xFF  # 'c'
    if 0x20 <= ch < 0x7F and ch not in (0x27, 0x5C):
        return f"'{chr(ch)}'"
    named = {0x27: "\\'", 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r"}
    return f"'{named[ch]}'" if ch in named else f"'\\x{ch:02x}'"


def _dump(ctx: "Context", physical: bool, args: list[str], cpu: int) -> str:
    m = ctx.machine
    fmt_text = args[0] if args and args[0].startswith("/") else "/1xw"
    rest = args[1:] if args and args[0].startswith("/") else args
    match = _FMT.match(fmt_text)
    if match is None:
        raise HmpError(f"invalid format '{fmt_text[:40]}' (expected /NFU, e.g. /4xw)")
    if len(rest) != 1:
        raise HmpError("expected one address after the format")
    count = int(match.group(1) or 1)
    fmt = match.group(2) or "x"
    size = 1 if fmt == "c" else _SIZES[match.group(3) or "w"]
    if count * size > MAX_DUMP:
        raise HmpError(f"at most {MAX_DUMP} bytes per dump")
    addr = _parse_int(rest[0])
    if addr < 0 or addr >= 1 << 64:
        raise HmpError("address out of range")
    vcpu = m.board.vcpus[cpu]
    line_size = 8 if size == 1 else 16
    out: list[str] = []
    pos, left = addr, count * size
    with m.lifecycle.vcpus_parked() if not physical else nullcontext():
        while left > 0:
            out.append(f"{pos:016x}:")
            n = min(line_size, left)
            for off in range(0, n, size):
                a = pos + off
                pa = a if physical else translate(vcpu, m.board.memory, a)
                try:
                    if pa is None:
                        raise GuestMemoryError("not mapped")
                    v = int.from_bytes(m.board.memory.read(pa, size), "little")
                except GuestMemoryError:
                    out.append(" Cannot access memory\n")
                    return "".join(out)
                out.append(" " + _format_value(fmt, size, v))
            out.append("\n")
            pos += n
            left -= n
    return "".join(out)

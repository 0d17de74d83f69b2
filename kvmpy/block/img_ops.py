"""The whole-image operations behind kvmpy-img: create, convert, compare, commit, rebase, map.

They work in large chunks (numpy zero detection, big preads/pwrites) so that convert runs at
file-system speed rather than Python speed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvmpy.block.backend import BlockBackend, Extent
from kvmpy.block.errors import BlockError
from kvmpy.block.image import chain_of, open_image, probe_format, resolve_backing
from kvmpy.block.progress import Progress
from kvmpy.block.qcow2_create import Qcow2Options, create_qcow2, parse_bool, validate
from kvmpy.block.qcow2_format import COMPRESSION_NAMES
from kvmpy.block.raw import create_raw
from kvmpy.block.sizes import parse_size

log = logging.getLogger(__name__)

CHUNK = 8 << 20
QCOW2_OPTIONS = ("size", "cluster_size", "backing_file", "backing_fmt", "compat",
                 "lazy_refcounts", "refcount_bits", "compression_type", "preallocation",
                 "extended_l2", "encryption", "encrypt.format")


def parse_options(text_list: list[str]) -> dict[str, str]:
    """-o a=b,c=d (repeatable; ',,' escapes a comma)."""
    opts: dict[str, str] = {}
    for text in text_list:
        parts, cur, i = [], "", 0
        while i < len(text):
            if text[i] == ",":
                if text[i:i + 2] == ",,":
                    cur += ","
                    i += 2
                    continue
                parts.append(cur)
                cur = ""
            else:
                cur += text[i]
            i += 1
        parts.append(cur)
        for p in parts:
            if not p:
                continue
            if "=" not in p:
                raise BlockError(f"Invalid option list: {text}" if p != "help" else
                                 "Supported options: " + ", ".join(QCOW2_OPTIONS))
            k, v = p.split("=", 1)
            opts[k.strip()] = v
    return opts


@dataclass
class CreateRequest:
    path: Path
    fmt: str
    size: int | None
    options: dict[str, str]


def create_image(req: CreateRequest) -> str:
    """Create an image; returns qemu-img's "Formatting ..." line."""
    o = dict(req.options)
    size = req.size
    if "size" in o:
        size = parse_size(o.pop("size"))
    if req.fmt == "raw":
        unknown = set(o) - {"preallocation"}
        if unknown:
            raise BlockError(f"{req.path}: Invalid parameter '{sorted(unknown)[0]}'")
        if o.get("preallocation", "off") != "off":
            raise BlockError(f"{req.path}: preallocation is not supported by kvmpy-img")
        if size is None:
            raise BlockError("Image creation needs a size parameter")
        create_raw(req.path, size)
        return f"Formatting '{req.path}', fmt=raw size={size}"
    if req.fmt != "qcow2":
        raise BlockError(f"Unknown file format '{req.fmt}'")
    unknown = set(o) - set(QCOW2_OPTIONS)
    if unknown:
        raise BlockError(f"{req.path}: Invalid parameter '{sorted(unknown)[0]}'")
    backing = o.get("backing_file") or None
    bfmt = o.get("backing_fmt") or None
    if backing:
        bpath = resolve_backing(req.path, backing)
        if bfmt is None:
            detected = probe_format(bpath) if bpath.exists() else "raw"
            raise BlockError(f"{req.path}: Backing file specified without backing format\n"
                             f"Detected format of {detected}.")
        try:
            with open_image(bpath, bfmt) as b:
                bsize = b.size()
        except BlockError as e:
            raise BlockError(f"{req.path}: Could not open backing image: {e}") from None
        if size is None:
            size = bsize
    if size is None:
        raise BlockError("Image creation needs a size parameter")
    compat = o.get("compat", "1.1")
    if compat not in ("0.10", "1.1", "v2", "v3"):
        raise BlockError(f"{req.path}: Invalid parameter 'compat': '{compat}'")
    version = 2 if compat in ("0.10", "v2") else 3
    ctype_name = o.get("compression_type", "zlib")
    names = {v: k for k, v in COMPRESSION_NAMES.items()}
    if ctype_name not in names:
        raise BlockError(f"{req.path}: Invalid parameter 'compression_type'")
    if o.get("preallocation", "off") != "off":
        raise BlockError(f"{req.path}: preallocation is not supported by kvmpy-img")
    if parse_bool(req.path, "extended_l2", o.get("extended_l2", "off")):
        raise BlockError(f"{req.path}: extended_l2 is not supported by kvmpy-img")
    if o.get("encryption") or o.get("encrypt.format"):
        raise BlockError(f"{req.path}: encryption is not supported by kvmpy-img")
    try:
        cluster_size = parse_size(o.get("cluster_size", "65536"))
        refcount_bits = int(o.get("refcount_bits", "16"))
    except ValueError:
        raise BlockError(f"{req.path}: Invalid option value") from None
    opts = Qcow2Options(size=size, cluster_size=cluster_size, version=version,
                        lazy_refcounts=parse_bool(req.path, "lazy_refcounts",
                                                  o.get("lazy_refcounts", "off")),
                        refcount_bits=refcount_bits, compression_type=names[ctype_name],
                        backing_file=backing, backing_format=bfmt)
    validate(req.path, opts)
    create_qcow2(req.path, opts)
    line = (f"Formatting '{req.path}', fmt=qcow2 cluster_size={cluster_size} extended_l2=off "
            f"compression_type={ctype_name} size={size}")
    if backing:
        line += f" backing_file={backing} backing_fmt={bfmt}"
    if "compat" in o:
        line += f" compat={o['compat']}"
    line += f" lazy_refcounts={'on' if opts.lazy_refcounts else 'off'} refcount_bits={refcount_bits}"
    return line


# ------------------------------------------------------------------------------ helpers
def nonzero_blocks(buf: bytes | bytearray | memoryview, gran: int) -> np.ndarray:
    """One bool per ``gran``-byte block of ``buf``: does it hold any non-zero byte?"""
    n = len(buf)
    nblocks = -(-n // gran)
    full = n // gran
    arr = np.frombuffer(buf, dtype=np.uint8)
    out = np.zeros(nblocks, dtype=bool)
    if full:
        body = arr[:full * gran]
        if gran % 8 == 0:
            rows = body.view(np.uint64).reshape(full, gran // 8)
            # Most data blocks have a non-zero first word; only the rest need a full scan.
            out[:full] = rows[:, 0] != 0
            maybe = np.flatnonzero(~out[:full])
            if maybe.size:
                out[maybe] = rows[maybe].any(axis=1)
        else:
            out[:full] = body.reshape(full, gran).any(axis=1)
    if full < nblocks:
        out[full] = bool(arr[full * gran:].any())
    return out


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index runs where mask is True."""
    if not mask.size:
        return []
    m = np.concatenate(([False], mask, [False])).astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def data_extents(img: BlockBackend, offset: int, length: int) -> list[Extent]:
    return [e for e in img.block_status(offset, length) if e.data]


# ------------------------------------------------------------------------------ convert
@dataclass
class ConvertRequest:
    sources: list[Path]
    source_fmt: str | None
    out: Path
    out_fmt: str
    options: dict[str, str]
    compress: bool = False
    progress: bool = False
    sparse_size: int = 4096
    skip_create: bool = False
    cache: str = "unsafe"  # qemu-img convert's default: the target is not fsynced


def convert(req: ConvertRequest) -> None:
    srcs: list[BlockBackend] = []
    try:
        for s in req.sources:
            srcs.append(open_image(s, req.source_fmt))
        total = sum(s.size() for s in srcs)
        if req.compress and req.out_fmt != "qcow2":
            raise BlockError(f"{req.out}: compression is only supported for the qcow2 format")
        if not req.skip_create:
            create_image(CreateRequest(req.out, req.out_fmt, total, req.options))
        with open_image(req.out, req.out_fmt, readonly=False, open_backing=False) as dst:
            dst.durable = req.cache != "unsafe"
            if dst.size() < total:
                raise BlockError(f"{req.out}: target image is smaller than the source")
            gran = dst.cluster_size() or req.sparse_size or 512
            if req.compress:
                gran = dst.cluster_size() or gran
            dense = req.sparse_size == 0  # -S 0, as in qemu-img: write zeros too, fully allocated
            with Progress(req.progress, total, "convert") as bar:
                base = 0
                for src in srcs:
                    _copy(src, dst, base, gran, req.compress, req.skip_create, bar, dense)
                    base += src.size()
            dst.flush()
    finally:
        for s in srcs:
            s.close()


def _copy(src: BlockBackend, dst: BlockBackend, base: int, gran: int, compress: bool,
          overwrite: bool, bar: Progress, dense: bool = False) -> None:
    """Copy src into dst at ``base``: holes are skipped (unless ``dense``), data is read ahead
    on a helper thread (one reader, so drivers need no locking) while the previous chunk is
    being written."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    size = src.size()
    jobs: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        span = min(size - pos, 1 << 30)
        for e in src.block_status(pos, span):
            if not e.data and not dense:
                if overwrite:
                    dst.write_zeroes(base + e.start, e.length)
                bar.advance(e.length)
                continue
            off = e.start
            while off < e.start + e.length:
                # chunks stay aligned to the target's granularity so clusters are whole
                n = min(CHUNK - (base + off) % CHUNK, e.start + e.length - off)
                jobs.append((off, n))
                off += n
        pos += span
    depth = 3
    # Buffers are made on first use: mapped chunks need none, and each costs 2048 page faults.
    bufs: list[bytearray | None] = [None] * (depth + 1)

    def fetch(i: int) -> memoryview:
        """Job i's bytes: a view of the source's page cache when it stores them as one run
        (no copy), else read into slot i % len(bufs), which job i + len(bufs) reuses."""
        off, n = jobs[i]
        view = src.mapped(off, n)
        if view is None:
            slot = i % len(bufs)
            buf = bufs[slot]
            if buf is None:
                buf = bufs[slot] = bytearray(CHUNK)
            view = memoryview(buf)[:n]
            src.readinto(off, view)
        return view

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvmpy-readahead") as reader:
        pending: deque = deque()

        def submit(i: int) -> None:
            pending.append((jobs[i][0], reader.submit(fetch, i)))

        for i in range(min(depth, len(jobs))):
            submit(i)
        for i in range(len(jobs)):
            off, fut = pending.popleft()
            view = fut.result()
            if i + depth < len(jobs):
                submit(i + depth)
            _write_chunk(dst, base + off, view, gran, compress, overwrite, dense)
            bar.advance(len(view))
            # Dropping the last reference to a mapped chunk unmaps it; let the reader thread do
            # that page-table teardown rather than the writing thread.
            reader.submit(_drop, view)
            del view, fut


def _drop(view: memoryview) -> None:
    """Runs on the read-ahead thread so the caller's reference to ``view`` dies there."""


def _write_chunk(dst: BlockBackend, off: int, buf: memoryview, gran: int, compress: bool,
                 overwrite: bool, dense: bool = False) -> None:
    if dense and not compress:
        dst.write(off, buf)
        return
    lead = off % gran
    if lead:  # align the zero-detection grid with the target's clusters
        head = min(len(buf), gran - lead)
        piece = buf[:head]
        if dense or overwrite or nonzero_blocks(piece, head).any():
            dst.write(off, piece)
        off, buf = off + head, buf[head:]
        if not buf:
            return
    mask = nonzero_blocks(buf, gran)
    if dense:
        mask[:] = True
    view = memoryview(buf)
    if compress:
        for i in np.flatnonzero(mask).tolist():
            piece = view[i * gran:(i + 1) * gran]
            if len(piece) == gran or off + i * gran + len(piece) == dst.size():
                dst.write_compressed(off + i * gran, bytes(piece))  # type: ignore[attr-defined]
            else:
                dst.write(off + i * gran, piece)
    else:
        for a, b in runs(mask):
            dst.write(off + a * gran, view[a * gran:b * gran])
    if overwrite:
        for a, b in runs(~mask):
            dst.write_zeroes(off + a * gran, min(b * gran, len(buf)) - a * gran)


# ------------------------------------------------------------------------------ compare
def _first_diff(a: bytes, b: bytes) -> int:
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    return int(np.flatnonzero(x != y)[0])


def compare(a: BlockBackend, b: BlockBackend, *, strict: bool = False,
            progress: bool = False) -> tuple[int, str]:
    """(exit code, message) as qemu-img compare reports them."""
    sa, sb = a.size(), b.size()
    msgs: list[str] = []
    if sa != sb:
        if strict:
            return 1, "Strict mode: Image size mismatch!"
        msgs.append("Warning: Image size mismatch!")
    common = min(sa, sb)
    with Progress(progress, max(sa, sb), "compare") as bar:
        pos = 0
        while pos < common:
            n = min(CHUNK, common - pos)
            ea = [e for e in a.block_status(pos, n) if e.data]
            eb = [e for e in b.block_status(pos, n) if e.data]
            if ea or eb:
                x, y = a.read(pos, n), b.read(pos, n)
                if x != y:
                    at = (pos + _first_diff(x, y)) // 512 * 512
                    return 1, "\n".join(msgs + [f"Content mismatch at offset {at}!"])
            if strict:
                ka = [(e.start, e.length, e.data, e.zero) for e in a.block_status(pos, n)]
                kb = [(e.start, e.length, e.data, e.zero) for e in b.block_status(pos, n)]
                if [k[2] for k in ka] != [k[2] for k in kb] or ka != kb:
                    for off in range(pos, pos + n, 512):
                        if _allocated(a, off) != _allocated(b, off):
                            return 1, "\n".join(msgs + [f"Content mismatch at offset {off}!"])
            bar.advance(n)
            pos += n
        big = a if sa > sb else b
        while pos < max(sa, sb):
            n = min(CHUNK, max(sa, sb) - pos)
            if any(e.data for e in big.block_status(pos, n)):
                buf = big.read(pos, n)
                nz = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8))
                if nz.size:
                    return 1, "\n".join(msgs + [f"Content mismatch at offset "
                                                f"{(pos + int(nz[0])) // 512 * 512}!"])
            bar.advance(n)
            pos += n
    return 0, "\n".join(msgs + ["Images are identical."])


def _allocated(img: BlockBackend, off: int) -> bool:
    e = img.block_status(off, min(512, img.size() - off))[0]
    return e.data


# ------------------------------------------------------------------------------ map
def map_extents(img: BlockBackend) -> list[Extent]:
    out: list[Extent] = []
    size = img.size()
    pos = 0
    while pos < size:
        n = min(size - pos, 1 << 30)
        out.extend(img.block_status(pos, n))
        pos += n
    from kvmpy.block.backend import merge_extents
    return merge_extents(out)


def map_json(img: BlockBackend) -> str:
    import json  # only here: kvmpy-img convert starts faster without it
    parts = []
    for e in map_extents(img):
        s = (f'{{ "start": {e.start}, "length": {e.length}, "depth": {e.depth}, '
             f'"present": {json.dumps(e.present)}, "zero": {json.dumps(e.zero)}, '
             f'"data": {json.dumps(e.data)}')
        if e.host_offset is not None:
            s += f', "offset": {e.host_offset}'
        parts.append(s + "}")
    return "[" + ",\n".join(parts) + "]"


def map_human(img: BlockBackend) -> str:
    layers = chain_of(img)
    lines = ["%-16s%-16s%-16s%s" % ("Offset", "Length", "Mapped to", "File")]
    for e in map_extents(img):
        if e.data and e.host_offset is not None:
            lines.append("%-16s%-16s%-16s%s" % (_hex(e.start), _hex(e.length), _hex(e.host_offset),
                                                layers[e.depth].path))
    return "\n".join(lines)


def _hex(v: int) -> str:
    return "0" if v == 0 else f"{v:#x}"


# ------------------------------------------------------------------------------ commit
def commit(top_path: Path, fmt: str | None, base_name: str | None, drop: bool,
           progress: bool) -> None:
    with open_image(top_path, fmt, readonly=False) as top:
        chain = chain_of(top)
        if len(chain) < 1 or top.backing is None:
            raise BlockError(f"{top_path}: image does not have a backing file")
        depth = 1
        if base_name is not None:
            want = Path(base_name).resolve()
            for i, layer in enumerate(chain[1:], 1):
                if layer.path.resolve() == want:
                    depth = i
                    break
            else:
                raise BlockError(f"Did not find '{base_name}' in the backing chain of '{top_path}'")
            drop = drop or depth > 1
        base_layer = chain[depth]
        with open_image(base_layer.path, base_layer.format_name, readonly=False,
                        open_backing=True) as base:
            if base.size() < top.size():
                base.resize(top.size())
            size = top.size()
            with Progress(progress, size, "commit") as bar:
                pos = 0
                while pos < size:
                    n = min(CHUNK, size - pos)
                    for e in top.block_status(pos, n):
                        if e.depth >= depth or not e.present:
                            continue
                        if e.data:
                            base.write(e.start, top.read(e.start, e.length))
                        else:
                            base.write_zeroes(e.start, e.length)
                    bar.advance(n)
                    pos += n
            base.flush()
        if not drop and hasattr(top, "make_empty"):
            top.make_empty()


# ------------------------------------------------------------------------------ rebase
def rebase(path: Path, fmt: str | None, backing: str, backing_fmt: str | None, unsafe: bool,
           progress: bool) -> None:
    with open_image(path, fmt, readonly=False, open_backing=not unsafe) as img:
        if not hasattr(img, "set_backing"):
            raise BlockError(f"{path}: the '{img.format_name}' format has no backing file")
        if backing and backing_fmt is None:
            bp = resolve_backing(path, backing)
            backing_fmt = probe_format(bp) if bp.exists() else None
        if not unsafe:
            new: BlockBackend | None = None
            if backing:
                new = open_image(resolve_backing(path, backing), backing_fmt)
            try:
                _rebase_copy(img, new, progress)
            finally:
                if new is not None:
                    new.close()
        img.set_backing(backing or None, backing_fmt if backing else None)  # type: ignore[attr-defined]


def _rebase_copy(img: BlockBackend, new: BlockBackend | None, progress: bool) -> None:
    size = img.size()
    gran = img.cluster_size() or 65536
    with Progress(progress, size, "rebase") as bar:
        pos = 0
        while pos < size:
            n = min(CHUNK, size - pos)
            for e in img.block_status(pos, n):
                if e.depth == 0 and e.present:
                    continue
                old = img.read(e.start, e.length)
                if new is not None:
                    avail = max(0, min(e.length, new.size() - e.start))
                    cur = (new.read(e.start, avail) if avail else b"") + bytes(e.length - avail)
                else:
                    cur = bytes(e.length)
                if old == cur:
                    continue
                x = np.frombuffer(old, dtype=np.uint8)
                y = np.frombuffer(cur, dtype=np.uint8)
                lead = e.start % gran
                pad = np.zeros(lead, dtype=bool)
                diff = np.concatenate((pad, x != y))
                nblk = -(-len(diff) // gran)
                diff = np.concatenate((diff, np.zeros(nblk * gran - len(diff), dtype=bool)))
                mask = diff.reshape(nblk, gran).any(axis=1)
                for a, b in runs(mask):
                    g0 = max(e.start, e.start - lead + a * gran)
                    g1 = min(e.start + e.length, e.start - lead + b * gran)
                    img.write(g0, old[g0 - e.start:g1 - e.start])
            bar.advance(n)
            pos += n

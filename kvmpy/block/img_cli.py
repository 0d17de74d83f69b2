"""kvmpy-img: qemu-img's command line (create, info, check, convert, compare, map, resize,
snapshot, rebase, commit) plus `io`, a qemu-io-like exerciser."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from kvmpy.block.errors import BlockError, CorruptImageError
from kvmpy.block.sizes import parse_size

PROG = "kvmpy-img"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _open(path: str, fmt: str | None, readonly: bool = True, **kw: object):  # type: ignore[no-untyped-def]
    from kvmpy.block.image import open_image
    return open_image(Path(path), fmt, readonly=readonly, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- commands
def cmd_create(a: argparse.Namespace) -> int:
    from kvmpy.block.img_ops import CreateRequest, create_image, parse_options
    opts = parse_options(a.o or [])
    if a.b is not None:
        opts["backing_file"] = a.b
    if a.F is not None:
        opts["backing_fmt"] = a.F
    size = parse_size(a.size) if a.size is not None else None
    line = create_image(CreateRequest(Path(a.filename), a.f or "raw", size, opts))
    if not a.q:
        _out(line)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from kvmpy.block.image import chain_of
    from kvmpy.block.img_info import human_info, image_info
    with _open(a.filename, a.f) as img:
        layers = chain_of(img) if a.backing_chain else [img]
        infos = [image_info(x) for x in layers]
    if a.output == "json":
        import json
        _out(json.dumps(infos if a.backing_chain else infos[0], indent=4))
    else:
        _out("\n".join(human_info(i) for i in infos).rstrip("\n"))
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from kvmpy.block.qcow2_check import check_image
    readonly = a.r is None
    img = _open(a.filename, a.f, readonly=readonly, open_backing=False, for_check=True)
    try:
        if img.format_name != "qcow2":
            print(f"{PROG}: This image format does not support checks", file=sys.stderr)
            return 63
        res = check_image(img.meta, a.r)  # type: ignore[attr-defined]
    finally:
        img.close()
    if a.output == "json":
        d: dict[str, object] = {}
        if res.image_end_offset:
            d["image-end-offset"] = res.image_end_offset
        if res.total_clusters:
            d["total-clusters"] = res.total_clusters
        d["check-errors"] = res.check_errors
        for key, val in (("leaks", res.leaks), ("corruptions", res.corruptions),
                         ("allocated-clusters", res.allocated_clusters),
                         ("fragmented-clusters", res.fragmented_clusters),
                         ("compressed-clusters", res.compressed_clusters),
                         ("leaks-fixed", res.leaks_fixed),
                         ("corruptions-fixed", res.corruptions_fixed)):
            if val:
                d[key] = val
        d["filename"] = a.filename
        d["format"] = "qcow2"
        for m in res.messages:
            print(m, file=sys.stderr)
        import json
        _out(json.dumps(d, indent=4))
    elif not a.q:
        for m in res.messages:
            print(m, file=sys.stderr)
        text = ""
        if res.corruptions_fixed or res.leaks_fixed:
            text += (f"The following inconsistencies were found and repaired:\n\n"
                     f"    {res.leaks_fixed} leaked clusters\n"
                     f"    {res.corruptions_fixed} corruptions\n\n"
                     f"Double checking the fixed image now...\n")
        if not (res.corruptions or res.leaks or res.check_errors):
            text += "No errors were found on the image.\n"
        else:
            if res.corruptions:
                text += (f"\n{res.corruptions} errors were found on the image.\nData may be "
                         "corrupted, or further writes to the image may corrupt it.\n")
            if res.leaks:
                text += (f"\n{res.leaks} leaked clusters were found on the image.\nThis means "
                         "waste of disk space, but no harm to data.\n")
            if res.check_errors:
                text += f"\n{res.check_errors} internal errors have occurred during the check.\n"
        if res.total_clusters and res.allocated_clusters:
            al = res.allocated_clusters
            text += ("%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed "
                     "clusters\n" % (al, res.total_clusters, al * 100.0 / res.total_clusters,
                                     res.fragmented_clusters * 100.0 / al,
                                     res.compressed_clusters * 100.0 / al))
        if res.image_end_offset:
            text += f"Image end offset: {res.image_end_offset}\n"
        sys.stdout.write(text)
    if res.check_errors:
        return 1
    if res.corruptions:
        return 2
    if res.leaks:
        return 3
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from kvmpy.block.img_ops import ConvertRequest, convert, parse_options
    if len(a.files) < 2:
        raise UsageError("Expecting one or more source images and an output image")
    sparse = parse_size(a.S) if a.S else 4096
    convert(ConvertRequest([Path(p) for p in a.files[:-1]], a.f, Path(a.files[-1]), a.O or "raw",
                           parse_options(a.o or []), a.c, a.p, sparse, a.n, a.t))
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from kvmpy.block.img_ops import compare
    try:
        with _open(a.image1, a.f) as x, _open(a.image2, a.F or a.f) as y:
            code, msg = compare(x, y, strict=a.s, progress=a.p)
    except BlockError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if not a.q:
        _out(msg)
    return code


def cmd_map(a: argparse.Namespace) -> int:
    from kvmpy.block.img_ops import map_human, map_json
    with _open(a.filename, a.f) as img:
        _out(map_json(img) if a.output == "json" else map_human(img))
    return 0


def cmd_resize(a: argparse.Namespace) -> int:
    text = a.size
    with _open(a.filename, a.f, readonly=False, open_backing=False) as img:
        if text.startswith(("+", "-")):
            delta = parse_size(text[1:])
            new = img.size() + delta if text[0] == "+" else img.size() - delta
        else:
            new = parse_size(text)
        if new < 0:
            raise BlockError("New image size must be positive")
        if new < img.size() and not a.shrink:
            raise BlockError("Use the --shrink option to perform a shrink operation.")
        img.resize(new, shrink=a.shrink)
    if not a.q:
        _out("Image resized.")
    return 0


def cmd_snapshot(a: argparse.Namespace) -> int:
    from kvmpy.block import qcow2_snapshot as snap
    from kvmpy.block.img_info import snapshot_dicts, snapshot_table_text
    chosen = [x for x in (a.l, a.a, a.c, a.d) if x]
    if len(chosen) != 1:
        raise UsageError("Cannot mix '-l', '-a', '-c', '-d'" if chosen else
                         "one of -l, -a, -c or -d is required")
    with _open(a.filename, a.f, readonly=not (a.a or a.c or a.d), open_backing=False) as img:
        if img.format_name != "qcow2":
            raise BlockError(f"{a.filename}: the '{img.format_name}' format does not support "
                             "snapshots")
        if a.l:
            _out("Snapshot list:\n" + snapshot_table_text(snapshot_dicts(img)))
        elif a.c:
            snap.create(img.meta, a.c)  # type: ignore[attr-defined]
        elif a.a:
            snap.apply(img.meta, a.a)  # type: ignore[attr-defined]
        else:
            snap.delete(img.meta, a.d)  # type: ignore[attr-defined]
    return 0


def cmd_rebase(a: argparse.Namespace) -> int:
    from kvmpy.block.img_ops import rebase
    if a.b is None:
        raise UsageError("Must specify backing file (-b) or use '-b \"\"' to remove it")
    rebase(Path(a.filename), a.f, a.b, a.F, a.u, a.p)
    return 0


def cmd_commit(a: argparse.Namespace) -> int:
    from kvmpy.block.img_ops import commit
    commit(Path(a.filename), a.f, a.b, a.d, a.p)
    if not a.q:
        _out("Image committed.")
    return 0


def cmd_io(a: argparse.Namespace) -> int:
    from kvmpy.block.qemu_io import only_reads, run_commands
    cmds = a.c if a.c else [line for line in sys.stdin]
    # Read-only work opens the image read-only: a read-write open may rewrite the header
    # (autoclear bits, the dirty flag) and must never happen just to look.
    with _open(a.filename, a.f, readonly=a.r or only_reads(cmds)) as img:
        ok = run_commands(img, cmds, _out)
    return 0 if ok else 1


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Create, inspect and convert qcow2 and raw disk images "
                                       "(qemu-img compatible).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("-q", action="store_true", help="quiet")
        return sp

    def fmt_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-f", metavar="FMT", choices=("raw", "qcow2"), help="image format")

    def output_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--output", choices=("human", "json"), default="human")

    sp = add("create", "create a new image")
    fmt_opt(sp)
    sp.add_argument("-o", action="append", metavar="OPTIONS",
                    help="cluster_size=,backing_file=,backing_fmt=,compat=,lazy_refcounts=,"
                         "refcount_bits=,compression_type=")
    sp.add_argument("-b", metavar="BACKING_FILE")
    sp.add_argument("-F", metavar="BACKING_FMT")
    sp.add_argument("-u", action="store_true", help="accepted for compatibility")
    sp.add_argument("filename")
    sp.add_argument("size", nargs="?")
    sp.set_defaults(func=cmd_create)

    sp = add("info", "show information about an image")
    fmt_opt(sp)
    output_opt(sp)
    sp.add_argument("--backing-chain", action="store_true")
    sp.add_argument("-U", "--force-share", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_info)

    sp = add("check", "check (and repair) an image's consistency")
    fmt_opt(sp)
    output_opt(sp)
    sp.add_argument("-r", choices=("leaks", "all"))
    sp.add_argument("-U", "--force-share", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_check)

    sp = add("convert", "convert an image to another format")
    fmt_opt(sp)
    sp.add_argument("-O", metavar="OUTPUT_FMT", choices=("raw", "qcow2"))
    sp.add_argument("-o", action="append", metavar="OPTIONS")
    sp.add_argument("-c", action="store_true", help="compress the output (qcow2)")
    sp.add_argument("-p", action="store_true", help="show progress")
    sp.add_argument("-S", metavar="SPARSE_SIZE", help="zero-detection granularity (raw output)")
    sp.add_argument("-n", action="store_true", help="do not create the target")
    sp.add_argument("-t", metavar="CACHE", default="unsafe",
                    choices=("unsafe", "writeback", "writethrough", "none", "directsync"),
                    help="target cache mode; 'unsafe' (the default, as in qemu-img) skips fsync")
    sp.add_argument("-U", "--force-share", action="store_true")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=cmd_convert)

    sp = add("compare", "compare the contents of two images")
    fmt_opt(sp)
    sp.add_argument("-F", metavar="FMT2", choices=("raw", "qcow2"))
    sp.add_argument("-s", action="store_true", help="strict: sizes and allocation must match")
    sp.add_argument("-p", action="store_true")
    sp.add_argument("-U", "--force-share", action="store_true")
    sp.add_argument("image1")
    sp.add_argument("image2")
    sp.set_defaults(func=cmd_compare)

    sp = add("map", "show an image's allocation map")
    fmt_opt(sp)
    output_opt(sp)
    sp.add_argument("-U", "--force-share", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_map)

    sp = add("resize", "change an image's virtual size ([+|-]SIZE)")
    fmt_opt(sp)
    sp.add_argument("--shrink", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_resize, size=None)

    sp = add("snapshot", "list, create, apply or delete internal snapshots")
    fmt_opt(sp)
    sp.add_argument("-l", action="store_true", help="list")
    sp.add_argument("-a", metavar="SNAPSHOT", help="apply")
    sp.add_argument("-c", metavar="SNAPSHOT", help="create")
    sp.add_argument("-d", metavar="SNAPSHOT", help="delete")
    sp.add_argument("-U", "--force-share", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_snapshot)

    sp = add("rebase", "change an image's backing file")
    fmt_opt(sp)
    sp.add_argument("-b", metavar="BACKING_FILE")
    sp.add_argument("-F", metavar="BACKING_FMT", choices=("raw", "qcow2"))
    sp.add_argument("-u", action="store_true", help="unsafe: only rewrite the header")
    sp.add_argument("-p", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_rebase)

    sp = add("commit", "write an image's changes into its backing file")
    fmt_opt(sp)
    sp.add_argument("-b", metavar="BASE")
    sp.add_argument("-d", action="store_true", help="do not empty the image afterwards")
    sp.add_argument("-p", action="store_true")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_commit)

    sp = add("io", "exercise an image: read/write/discard/map/flush (qemu-io syntax)")
    fmt_opt(sp)
    sp.add_argument("-c", action="append", metavar="CMD",
                    help="command to run (repeatable); without -c, commands come from stdin")
    sp.add_argument("-r", action="store_true", help="open read-only")
    sp.add_argument("filename")
    sp.set_defaults(func=cmd_io)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; ``argv`` None means "as the program", which also ends the process."""
    code = _run(argv)
    if argv is None:
        # Everything is written and closed by now: skip tearing the interpreter down, which
        # costs ~10 ms once numpy is loaded (a tenth of kvmpy-img's start-up and exit).
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:  # e.g. stdout was a pipe whose reader went away
            code = code or 120
        os._exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    # kvmpy-img does no linear algebra: one OpenBLAS thread makes numpy's import ~60 ms cheaper
    # (it would otherwise start a thread per core and size buffers for them).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    parser = build_parser()
    if argv and argv[0] == "resize" and len(argv) >= 3 and not argv[-1].startswith("--"):
        size = argv.pop()  # qemu-img takes the size off first so "-1G" is not an option
        argv.append("--")
        argv.append(size)
        parser_args = argv
    else:
        parser_args = argv
    try:
        if argv and argv[0] == "resize" and "--" in parser_args:
            i = parser_args.index("--")
            args = parser.parse_args(parser_args[:i])
            args.size = parser_args[i + 1]
        else:
            args = parser.parse_args(parser_args)
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return int(args.func(args))
    except UsageError as e:
        print(f"{PROG}: {e}\nTry '{PROG} --help' for more information.", file=sys.stderr)
        return 1
    except CorruptImageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except BlockError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"{PROG}: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

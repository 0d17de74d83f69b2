"""Test infrastructure: the nested complete-KVM test bed, an L1 Linux VM under QEMU TCG with kvm-amd.

Nothing in kvmpy's product code imports this package; it imports the product's tools
(:mod:`kvmpy.tools`: package fetch, cpio, initramfs builder) and loader. It ships inside
the kvmpy package so that ``python -m kvmpy.testbed`` and the pytest plugin work from a
plain checkout and from an install alike.

This host's /dev/kvm is PVM-based, so anything needing a complete KVM (booting a real
Linux guest, say) runs inside L1 instead: ``qemu-system-x86_64 -accel tcg -cpu max``
(which exposes SVM) booting Debian's generic 6.1 kernel, whose kvm-amd gives L1 a
complete /dev/kvm. The host root is visible read-only and chosen directories are
shared writable at their own paths, so the host's Python runs the checkout unchanged.

Modules:
  l1_initramfs   the L1 initramfs and its /init (built with kvmpy.tools.initramfs)
  kernel_image   bzImage -> cached PVH vmlinux (skips in-guest decompression; uses kvmpy.loader)
  bed            NestedBed(...).run(argv, cwd, env, timeout) -> BedResult
  pytest_plugin  the kvm_full / kvm_host markers
  __main__       ``python -m kvmpy.testbed -- CMD ARGS``

``NestedBed``, ``BedResult`` and the errors are re-exported here lazily, so importing
the package (as the pytest plugin does inside the slow L1) stays cheap.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"NestedBed", "BedResult", "BedTimings", "BedError", "BedUnavailable", "BedBootError", "BedTimeout",
         "BedStalled"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from kvmpy.testbed import bed

        return getattr(bed, name)
    raise AttributeError(f"module 'kvmpy.testbed' has no attribute {name!r}")


__all__ = sorted(_LAZY)

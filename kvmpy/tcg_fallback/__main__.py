"""Compatibility entry: ``python -m kvmpy.tcg_fallback -machine virt -kernel prog.elf ...``.

The riscv64 runner lives in kvmpy/boards/riscv_virt_run.py now; the main
``kvmpy`` CLI offers the same flags through kvmpy/cli.py.
"""

import sys

from kvmpy.boards.riscv_virt_run import main

if __name__ == "__main__":
    sys.exit(main())

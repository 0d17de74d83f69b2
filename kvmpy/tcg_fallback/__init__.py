"""Old name of the riscv64 TCG runner, kept so ``python -m kvmpy.tcg_fallback`` still works.

The engine is ``kvmpy.tcg``, the riscv target ``kvmpy.tcg.target.riscv`` and the
board ``kvmpy.boards.riscv_virt``; nothing imports this package.
"""

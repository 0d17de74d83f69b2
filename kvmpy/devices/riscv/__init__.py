"""Devices of the riscv64 ``virt`` board: CLINT, PLIC, the sifive_test finisher and HTIF (one file each)."""

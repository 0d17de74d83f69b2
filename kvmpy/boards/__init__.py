"""Boards: a machine's memory map, its device table, its CPUs and how it boots (pc, riscv_virt)."""

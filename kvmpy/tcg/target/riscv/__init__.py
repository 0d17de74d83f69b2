"""The riscv64 target: instruction decode, translation to IR, the hart's CSRs and traps, and Sv39 paging."""

"""RISC-V (RV64IMAC, Zicsr, Zifencei; M/S/U; Sv39) guest support for the TCG fallback."""

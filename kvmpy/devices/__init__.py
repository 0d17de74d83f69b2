"""Emulated devices and the PIO/MMIO buses they sit on."""

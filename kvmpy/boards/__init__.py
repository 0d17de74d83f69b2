"""Boards: what a machine is made of (memory map, device table, vCPUs, boot). ``pc`` is the x86 PC."""

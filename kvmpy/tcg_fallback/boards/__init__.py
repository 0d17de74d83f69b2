"""Boards for the TCG fallback: memory maps and the devices on them."""

"""QEMU's Bochs-VBE display adapters (std VGA, bochs-display): registers, EDID, fonts and rendering."""

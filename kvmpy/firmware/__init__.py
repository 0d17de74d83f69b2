"""Firmware support: what the firmware reads from the machine (fw_cfg contents, the ACPI table-loader)
and the firmware images themselves (SeaBIOS from Debian's seabios package, -bios, -L)."""

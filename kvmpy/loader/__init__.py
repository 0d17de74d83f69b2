"""Guest kernel loaders (multiboot, Linux boot protocol) and boot-time tables."""

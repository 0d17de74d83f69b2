"""The PC's PIIX3 IDE function: ATA disks, ATAPI CD-ROMs and bus-master DMA on two legacy channels."""

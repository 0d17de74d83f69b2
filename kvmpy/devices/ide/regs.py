"""ATA register layout, status/error bits and command opcodes (ATA/ATAPI-6 facts, as QEMU's hw/ide uses them).

Offsets are from a channel's command block (0x1F0 / 0x170); the control block is one port
(0x3F6 / 0x376): alternate status on read, device control on write.
"""

from __future__ import annotations

SECTOR_SIZE = 512
CD_SECTOR_SIZE = 2048

# command block registers (offset from the base)
REG_DATA, REG_ERROR, REG_NSECTOR, REG_LBA_LOW, REG_LBA_MID, REG_LBA_HIGH, REG_DEVICE, REG_STATUS = range(8)
REG_FEATURE, REG_COMMAND = REG_ERROR, REG_STATUS

# status bits
ST_ERR, ST_IDX, ST_CORR, ST_DRQ, ST_DSC, ST_DF, ST_DRDY, ST_BSY = (1 << i for i in range(8))
READY = ST_DRDY | ST_DSC

# error bits
ERR_AMNF, ERR_ABRT, ERR_IDNF, ERR_UNC = 0x01, 0x04, 0x10, 0x40

# device register
DEV_SLAVE, DEV_LBA = 0x10, 0x40

# device control register
CTL_NIEN, CTL_SRST, CTL_HOB = 0x02, 0x04, 0x80

# ATAPI interrupt reason (sector count register)
IR_COD, IR_IO, IR_REL = 0x01, 0x02, 0x04
ATAPI_SIGNATURE = (0x14, 0xEB)  # LBA mid/high after reset or a refused IDENTIFY DEVICE
ATAPI_FEATURE_DMA = 0x01

# commands
CMD_NOP = 0x00
CMD_DEVICE_RESET = 0x08
CMD_RECALIBRATE = 0x10
CMD_READ = 0x20
CMD_READ_NORETRY = 0x21
CMD_READ_EXT = 0x24
CMD_READ_DMA_EXT = 0x25
CMD_READ_NATIVE_MAX_EXT = 0x27
CMD_READ_MULTIPLE_EXT = 0x29
CMD_WRITE = 0x30
CMD_WRITE_NORETRY = 0x31
CMD_WRITE_EXT = 0x34
CMD_WRITE_DMA_EXT = 0x35
CMD_WRITE_MULTIPLE_EXT = 0x39
CMD_VERIFY = 0x40
CMD_VERIFY_NORETRY = 0x41
CMD_VERIFY_EXT = 0x42
CMD_SEEK = 0x70
CMD_DIAGNOSE = 0x90
CMD_SPECIFY = 0x91  # INITIALIZE DEVICE PARAMETERS
CMD_PACKET = 0xA0
CMD_IDENTIFY_PACKET = 0xA1
CMD_READ_MULTIPLE = 0xC4
CMD_WRITE_MULTIPLE = 0xC5
CMD_SET_MULTIPLE = 0xC6
CMD_READ_DMA = 0xC8
CMD_READ_DMA_NORETRY = 0xC9
CMD_WRITE_DMA = 0xCA
CMD_WRITE_DMA_NORETRY = 0xCB
CMD_STANDBY_IMMEDIATE = 0xE0
CMD_IDLE_IMMEDIATE = 0xE1
CMD_STANDBY = 0xE2
CMD_IDLE = 0xE3
CMD_CHECK_POWER = 0xE5
CMD_SLEEP = 0xE6
CMD_FLUSH = 0xE7
CMD_FLUSH_EXT = 0xEA
CMD_IDENTIFY = 0xEC
CMD_SET_FEATURES = 0xEF
CMD_READ_NATIVE_MAX = 0xF8

# SET FEATURES subcommands accepted (QEMU's list): write cache on/off, transfer mode, lookahead, ...
SF_WCACHE_ON, SF_WCACHE_OFF, SF_XFER_MODE = 0x02, 0x82, 0x03
SF_ACCEPTED = frozenset({SF_WCACHE_ON, SF_WCACHE_OFF, SF_XFER_MODE, 0x04, 0x05, 0x06, 0x42, 0x55, 0x66, 0x69,
                         0x85, 0x86, 0x8A, 0x90, 0x96, 0x9A, 0xAA, 0xCC, 0xCD})

MAX_MULT_SECTORS = 16  # what IDENTIFY word 47 offers

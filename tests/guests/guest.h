/* Constants and macros shared by the test guests (included by lib.S and every <name>.S).
 *
 * Machine convention (QEMU's pc machine): COM1 at 0x3f8 (IRQ4), isa-debug-exit at
 * 0xf4 (4 bytes wide, QEMU exits with (value << 1) | 1), PIT at 0x40, 8259 PICs at
 * 0x20/0xa0, LAPIC at 0xfee00000.
 *
 * Calling convention of the lib routines: arguments in %eax/%edx/%esi, result in %eax;
 * every other register is preserved.
 */
#ifndef GUEST_H
#define GUEST_H

#define MB_MAGIC        0x1BADB002
#define MB_FLAGS        0x00000003      /* page-align modules, want memory info */
#define MB_BOOT_MAGIC   0x2BADB002      /* what the loader puts in %eax */

/* multiboot_info offsets */
#define MBI_FLAGS       0
#define MBI_MEM_LOWER   4
#define MBI_MEM_UPPER   8
#define MBI_CMDLINE     16
#define MBI_MMAP_LENGTH 44
#define MBI_MMAP_ADDR   48

#define COM1            0x3f8
#define DEBUG_EXIT_PORT 0xf4

/* isa-debug-exit values; QEMU's exit status is (value << 1) | 1 */
#define EXIT_PASS       0x10            /* status 33 */
#define EXIT_FAIL       0x11            /* status 35 */
#define EXIT_EXCEPTION  0x12            /* status 37: unexpected CPU exception/interrupt */
#define EXIT_BADBOOT    0x13            /* status 39: not started by a multiboot loader */

#define SEL_CODE32      0x08
#define SEL_DATA32      0x10
#define SEL_CODE64      0x18

#define LAPIC_BASE      0xfee00000

/* Print a literal string (escapes allowed) on COM1. */
.macro PUTS text
    .pushsection .rodata
9990: .asciz "\text"
    .popsection
    push %esi
    mov $9990b, %esi
    call puts
    pop %esi
.endm

/* The same from 64-bit code (lib64.S). */
.macro PUTS64 text
    .pushsection .rodata
9992: .asciz "\text"
    .popsection
    push %rsi
    mov $9992b, %esi
    call puts64
    pop %rsi
.endm

/* %eax = value of "key=..." on the command line parsed as a number, or \default. */
.macro CMDLINE_UINT key, default
    .pushsection .rodata
9991: .asciz "\key"
    .popsection
    push %esi
    mov $9991b, %esi
    mov $\default, %eax
    call cmdline_uint
    pop %esi
.endm

#endif

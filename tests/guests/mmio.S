/* mmio: MMIO reads and writes at an unassigned guest-physical address (default
 * 0xd0000000, below the LAPIC/IOAPIC window), then reads the in-kernel LAPIC's ID and
 * version registers. Prints every value read and exits EXIT_PASS; the values differ
 * between hypervisors (kvmpy reads all-ones from unassigned space), so nothing is judged.
 * Command line: addr=N (default 0xd0000000). */
#include "guest.h"

    .text
    .globl main
main:
    push %ebx
    CMDLINE_UINT "addr", 0xd0000000
    and $-4, %eax
    mov %eax, %ebx
    PUTS "mmio: addr "
    call puthex32
    call newline
    PUTS "read32 "
    mov (%ebx), %eax
    call puthex32
    PUTS "\nread16 "
    movzwl 2(%ebx), %eax
    call puthex32
    PUTS "\nread8 "
    movzbl 1(%ebx), %eax
    call puthex32
    PUTS "\nwrite32 0x12345678\n"
    movl $0x12345678, (%ebx)
    PUTS "write8 0x9a\n"
    movb $0x9a, 3(%ebx)
    PUTS "readback32 "
    mov (%ebx), %eax
    call puthex32
    PUTS "\nlapic id "
    mov LAPIC_BASE + 0x20, %eax
    call puthex32
    PUTS "\nlapic version "
    mov LAPIC_BASE + 0x30, %eax
    call puthex32
    PUTS "\nmmio done\n"
    mov $EXIT_PASS, %eax
    pop %ebx
    ret

    .section .note.GNU-stack, "", @progbits

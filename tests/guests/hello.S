/* hello: prints a greeting and the multiboot information it was given, then exits.
 * Deterministic for the same -m and -append, so it doubles as the differential guest. */
#include "guest.h"

    .text
    .globl main
main:
    push %ebx
    PUTS "hello from kvmpy test guest\n"
    mov mb_info, %ebx
    PUTS "mbi flags "
    mov MBI_FLAGS(%ebx), %eax
    call puthex32
    call newline
    testl $1, MBI_FLAGS(%ebx)
    jz 1f
    PUTS "mem_lower "
    mov MBI_MEM_LOWER(%ebx), %eax
    call putdec
    PUTS " KiB\nmem_upper "
    mov MBI_MEM_UPPER(%ebx), %eax
    call putdec
    PUTS " KiB\n"
1:  PUTS "cmdline \""
    call cmdline_ptr
    test %eax, %eax
    jz 2f
    push %esi
    push %edx
    mov %eax, %esi
    mov $256, %edx              /* bounded: a loader bug must not flood the console */
    call putsn
    pop %edx
    pop %esi
2:  PUTS "\"\n"
    testl $0x40, MBI_FLAGS(%ebx)
    jz 5f
    call print_mmap
5:  PUTS "bye\n"
    mov $EXIT_PASS, %eax
    pop %ebx
    ret

/* Each entry: u32 size (not counting itself), u64 base, u64 length, u32 type. */
print_mmap:
    push %esi
    push %edi
    push %ecx
    push %edx
    mov MBI_MMAP_ADDR(%ebx), %esi
    mov MBI_MMAP_LENGTH(%ebx), %edi
    add %esi, %edi              /* end */
    xor %ecx, %ecx              /* entry count, bounded */
1:  cmp %edi, %esi
    jae 9f
    cmp $64, %ecx
    jae 9f
    PUTS "mmap "
    mov 8(%esi), %eax           /* base high */
    mov $8, %edx
    call puthex_n
    mov 4(%esi), %eax           /* base low */
    call puthex_n
    PUTS " len "
    mov 16(%esi), %eax
    call puthex_n
    mov 12(%esi), %eax
    call puthex_n
    PUTS " type "
    mov 20(%esi), %eax
    call putdec
    call newline
    mov (%esi), %eax
    cmp $20, %eax               /* malformed size: stop rather than loop */
    jb 9f
    lea 4(%esi,%eax), %esi
    inc %ecx
    jmp 1b
9:  PUTS "mmap entries "
    mov %ecx, %eax
    call putdec
    call newline
    pop %edx
    pop %ecx
    pop %edi
    pop %esi
    ret

    .section .note.GNU-stack, "", @progbits

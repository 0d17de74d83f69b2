/* dirtier: like QEMU's migration test guest, endlessly increments the first byte of
 * every 4 KiB page of [start_mb MiB, start_mb + size_mb MiB) and prints 'B' on COM1
 * after each full pass; never exits. The range is clipped to the end of RAM; a start
 * below the kernel's end prints "bad range" and exits EXIT_FAIL.
 * Output: "dirtier: <start hex>-<end hex>\n" then "BBBB...".
 * Command line: start_mb=N (default 2), size_mb=N (default 16). */
#include "guest.h"

    .text
    .globl main
main:
    CMDLINE_UINT "start_mb", 2
    cmp $4096, %eax
    jae bad
    shl $20, %eax
    mov %eax, %ebx
    cmp $__image_end, %ebx
    jb bad
    CMDLINE_UINT "size_mb", 16
    cmp $4096, %eax
    jb 1f
    mov $4095, %eax
1:  shl $20, %eax
    add %ebx, %eax
    jnc 2f
    mov $0xfffff000, %eax
2:  mov %eax, %esi              /* end */
    call ram_end
    cmp %eax, %esi
    jbe 3f
    mov %eax, %esi
3:  cmp %ebx, %esi
    jbe bad
    PUTS "dirtier: "
    mov %ebx, %eax
    call puthex32
    mov $'-', %al
    call putc
    mov %esi, %eax
    call puthex32
    call newline
pass:
    mov %ebx, %edi
4:  incb (%edi)
    add $4096, %edi
    cmp %esi, %edi
    jb 4b
    mov $'B', %al
    call putc
    jmp pass
bad:
    PUTS "bad range\n"
    mov $EXIT_FAIL, %eax
    ret

    .section .note.GNU-stack, "", @progbits

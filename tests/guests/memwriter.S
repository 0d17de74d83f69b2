/* memwriter: fills a set of 4 KiB pages with a pattern, for KVM dirty-log tests.
 * Page i of the set is at start + i * stride * 4096; every dword of it becomes
 * (page address | 0xa5a). Prints "memwriter: start <hex> pages <n> stride <n>" and
 * "done <n>", then exits EXIT_PASS; a range that overlaps the kernel or passes the end
 * of RAM prints "bad range" and exits EXIT_FAIL.
 * Command line: start=N (default 0x400000, page aligned down), pages=N (default 128),
 * stride=N pages (default 2). */
#include "guest.h"

    .text
    .globl main
main:
    push %ebx
    push %esi
    push %edi
    CMDLINE_UINT "start", 0x400000
    and $-4096, %eax
    mov %eax, %ebx
    CMDLINE_UINT "pages", 128
    mov %eax, %esi
    CMDLINE_UINT "stride", 2
    test %eax, %eax
    jnz 1f
    inc %eax
1:  mov %eax, %edi
    PUTS "memwriter: start "
    mov %ebx, %eax
    call puthex32
    PUTS " pages "
    mov %esi, %eax
    call putdec
    PUTS " stride "
    mov %edi, %eax
    call putdec
    call newline
    /* Range check in 64-bit arithmetic: last byte = start + ((pages-1)*stride+1)*4096 */
    cmp $__image_end, %ebx
    jb bad
    test %esi, %esi
    jz fill
    lea -1(%esi), %eax
    mul %edi                    /* %edx:%eax = (pages-1)*stride */
    test %edx, %edx
    jnz bad
    add $1, %eax
    jc bad
    cmp $0x100000, %eax         /* at most 4 GiB worth of pages */
    jae bad
    shl $12, %eax
    add %ebx, %eax
    jc bad
    push %eax
    call ram_end
    pop %edx
    cmp %eax, %edx
    ja bad
fill:
    xor %ecx, %ecx              /* pages written */
    mov %edi, %edx
    shl $12, %edx               /* stride in bytes */
2:  cmp %esi, %ecx
    jae 3f
    push %ecx
    push %edi
    mov %ebx, %edi
    mov %ebx, %eax
    or $0xa5a, %eax
    mov $1024, %ecx
    rep stosl
    pop %edi
    pop %ecx
    add %edx, %ebx
    inc %ecx
    jmp 2b
3:  PUTS "done "
    mov %ecx, %eax
    call putdec
    call newline
    mov $EXIT_PASS, %eax
    jmp 9f
bad:
    PUTS "bad range\n"
    mov $EXIT_FAIL, %eax
9:  pop %edi
    pop %esi
    pop %ebx
    ret

    .section .note.GNU-stack, "", @progbits

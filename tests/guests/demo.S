/* demo: the README's showcase. Prints a banner (RAM size, command line, CPU vendor and
 * hypervisor signature) and an integer-only ASCII Mandelbrot set, then exits.
 * Sized to finish in about a second at ~1.7 M emulated instructions/s.
 * Command line: cols=N rows=N iters=N (defaults 72, 22, 40). */
#include "guest.h"

#define FRAC 12                 /* fixed point: 1.0 == 4096 */

    .text
    .globl main
main:
    push %ebx
    push %esi
    push %edi
    push %ebp
    PUTS "\n  kvmpy demo guest\n  ----------------\n  memory : "
    mov mb_info, %ebx
    xor %eax, %eax
    testl $1, MBI_FLAGS(%ebx)
    jz 1f
    mov MBI_MEM_UPPER(%ebx), %eax
    add $1024, %eax             /* mem_upper counts from 1 MiB */
    shr $10, %eax
1:  call putdec
    PUTS " MiB\n  cmdline: \""
    call cmdline_ptr
    test %eax, %eax
    jz 2f
    mov %eax, %esi
    mov $200, %edx
    call putsn
2:  PUTS "\"\n  cpu    : "
    call print_cpu
    call newline
    call newline

    CMDLINE_UINT "cols", 72
    call clamp_1_200
    mov %eax, cols
    CMDLINE_UINT "rows", 22
    call clamp_1_200
    mov %eax, rows
    CMDLINE_UINT "iters", 40
    call clamp_1_200
    mov %eax, iters
    /* step_x = 2.7 / cols, x from -2.1, step_y = 2.2 / (rows - 1), in fixed point */
    mov $(27 << FRAC) / 10, %eax
    xor %edx, %edx
    divl cols
    mov %eax, step_x
    mov rows, %ecx
    dec %ecx
    jnz 3f
    inc %ecx
3:  mov $(22 << FRAC) / 10, %eax
    xor %edx, %edx
    div %ecx
    mov %eax, step_y

    movl $-(11 << FRAC) / 10, cy
    movl $0, row
row_loop:
    mov $' ', %al
    call putc
    call putc
    movl $-(21 << FRAC) / 10, cx
    movl $0, col
col_loop:
    /* z = 0; iterate z = z^2 + c; %esi = zr, %edi = zi, %ecx = n */
    xor %esi, %esi
    xor %edi, %edi
    xor %ecx, %ecx
iter:
    mov %esi, %eax
    imul %esi, %eax
    sar $FRAC, %eax             /* zr^2 */
    mov %edi, %ebx
    imul %edi, %ebx
    sar $FRAC, %ebx             /* zi^2 */
    lea (%eax,%ebx), %edx
    cmp $(4 << FRAC), %edx
    jg escaped
    sub %ebx, %eax              /* zr^2 - zi^2 */
    imul %esi, %edi
    sar $(FRAC - 1), %edi       /* 2 zr zi */
    add cy, %edi
    add cx, %eax
    mov %eax, %esi
    inc %ecx
    cmp iters, %ecx
    jb iter
    mov $'#', %al               /* inside the set */
    jmp plot
escaped:
    cmp $9, %ecx                /* shade by escape time, saturating */
    jbe 1f
    mov $9, %ecx
1:  mov palette(%ecx), %al
plot:
    call putc
    mov step_x, %eax
    add %eax, cx
    incl col
    mov col, %eax
    cmp cols, %eax
    jb col_loop
    call newline
    mov step_y, %eax
    add %eax, cy
    incl row
    mov row, %eax
    cmp rows, %eax
    jb row_loop

    PUTS "\n  done: resetting through the i8042 (-no-reboot makes that a clean exit)\n"
    mov $0xfe, %al              /* pulse the reset line */
    out %al, $0x64
    /* Still here (no i8042 reset): fall back to isa-debug-exit. */
    mov $EXIT_PASS, %eax
    pop %ebp
    pop %edi
    pop %esi
    pop %ebx
    ret

clamp_1_200:
    cmp $1, %eax
    jge 1f
    mov $1, %eax
1:  cmp $200, %eax
    jle 2f
    mov $200, %eax
2:  ret

/* Vendor string, and the hypervisor signature when CPUID says there is one. */
print_cpu:
    push %ebx
    push %ecx
    push %edx
    xor %eax, %eax
    cpuid
    mov %ebx, vendor
    mov %edx, vendor + 4
    mov %ecx, vendor + 8
    push %esi
    mov $vendor, %esi
    call puts
    mov $1, %eax
    cpuid
    test $0x80000000, %ecx
    jz 1f
    mov $0x40000000, %eax
    cpuid
    mov %ebx, vendor
    mov %ecx, vendor + 4
    mov %edx, vendor + 8
    PUTS ", hypervisor \""
    mov $vendor, %esi
    call puts
    PUTS "\""
1:  pop %esi
    pop %edx
    pop %ecx
    pop %ebx
    ret

    .section .rodata
palette:
    .ascii "  .,:-=+*%@"

    .data
    .p2align 2
cols:   .long 0
rows:   .long 0
iters:  .long 0
step_x: .long 0
step_y: .long 0
cx:     .long 0
cy:     .long 0
col:    .long 0
row:    .long 0
vendor: .fill 13, 1, 0

    .section .note.GNU-stack, "", @progbits

/* script: runs the operations listed in its first multiboot module, one 16-byte record
 * each (u32 op, a, b, c), so a test can make a real vCPU drive devices the way a driver
 * would, hostile or not: every store is a real guest store (an MMIO exit, an ioeventfd
 * kick, or plain RAM), every port access a real I/O exit. The guest knows no device;
 * the test composes the records and reads what the guest prints on COM1.
 *
 *   op  0  end of the script: exit EXIT_PASS
 *   op  1  store32 [a] = b        op 2  store16 [a] = b        op 3  store8 [a] = b
 *   op  4  print "R <load32 [a]>" op 13 print "R <load8 [a]>" op 14 print "R <load16 [a]>"
 *   op  5  outl port a, b         op 11 outw port a, b         op 12 outb port a, b
 *   op  6  print "P <inl port a>"
 *   op  7  wait until load16 [a] == b ("WAIT used"), or print "WAIT timeout" after c * 1024
 *          loads (c = 0: 10000 * 1024); no PAUSE, which a hypervisor may turn into exits
 *   op  8  fill [a, a+b) with the byte c
 *   op  9  check that [a, a+b) holds only the byte c: "CHECK ok", or "CHECK bad <addr> <dword there>"
 *   op 10  print "MARK <a>"
 * An unknown op prints "BAD OP" and exits EXIT_FAIL; so does a missing module.
 * Fill and check are single string instructions (rep stos, repe scas): on this project's PVM
 * host a byte loop over 58 MiB of this unpaged code took minutes, nearly all in the kernel, and
 * a long wait would too: keep waits short there.
 * Addresses are physical (paging is off): the test keeps its records, rings and buffers
 * inside the RAM it gave the guest and clear of this kernel at 1 MiB. */
#include "guest.h"

#define MBI_MODS_COUNT  20
#define MBI_MODS_ADDR   24
#define WAIT_KSPINS     10000

    .text
    .globl main
main:
    push %ebx
    push %esi
    push %edi
    push %ebp
    mov mb_info, %eax
    test %eax, %eax
    jz no_module
    testl $8, MBI_FLAGS(%eax)           /* bit 3: mods_count and mods_addr are valid */
    jz no_module
    cmpl $0, MBI_MODS_COUNT(%eax)
    je no_module
    mov MBI_MODS_ADDR(%eax), %eax
    mov (%eax), %esi                    /* records start */
    mov 4(%eax), %ebp                   /* module end */
    PUTS "script: start\n"

next:
    lea 16(%esi), %eax
    cmp %ebp, %eax
    ja done                             /* a partial record ends the script */
    mov (%esi), %eax                    /* op */
    mov 4(%esi), %ebx                   /* a */
    mov 8(%esi), %ecx                   /* b */
    mov 12(%esi), %edx                  /* c */
    add $16, %esi
    cmp $14, %eax
    ja bad_op
    jmp *optable(,%eax,4)

op_store32:
    mov %ecx, (%ebx)
    jmp next
op_store16:
    mov %cx, (%ebx)
    jmp next
op_store8:
    mov %cl, (%ebx)
    jmp next
op_load32:
    mov (%ebx), %eax
    jmp print_r
op_load16:
    movzwl (%ebx), %eax
    jmp print_r
op_load8:
    movzbl (%ebx), %eax
print_r:
    PUTS "R "
    call puthex32
    call newline
    jmp next
op_outl:
    mov %ecx, %eax
    mov %ebx, %edx
    out %eax, %dx
    jmp next
op_outw:
    mov %ecx, %eax
    mov %ebx, %edx
    out %ax, %dx
    jmp next
op_outb:
    mov %ecx, %eax
    mov %ebx, %edx
    out %al, %dx
    jmp next
op_inl:
    mov %ebx, %edx
    in %dx, %eax
    PUTS "P "
    call puthex32
    call newline
    jmp next

op_wait:
    mov %edx, %edi
    test %edi, %edi
    jnz 1f
    mov $WAIT_KSPINS, %edi
1:  shl $10, %edi                       /* c thousand-ish spins (1024 each) */
2:  movzwl (%ebx), %eax
    cmp %ecx, %eax
    je 3f
    dec %edi
    jnz 2b
    PUTS "WAIT timeout\n"
    jmp next
3:  PUTS "WAIT used\n"
    jmp next

op_fill:
    push %edi
    mov %ebx, %edi
    movzbl %dl, %eax
    imul $0x01010101, %eax              /* the byte in all four lanes */
    mov %ebx, %edx
    or %ecx, %edx
    test $3, %edx
    jnz 1f
    shr $2, %ecx
    rep stosl                           /* aligned: a dword at a time */
    pop %edi
    jmp next
1:  rep stosb
    pop %edi
    jmp next

op_check:
    test %ecx, %ecx
    jz 2f
    push %edi
    mov %ebx, %edi
    movzbl %dl, %eax
    imul $0x01010101, %eax
    mov %ebx, %edx
    or %ecx, %edx
    test $3, %edx
    jnz 1f
    shr $2, %ecx
    repe scasl                          /* one instruction, not a loop of them */
    lea -4(%edi), %ebx                  /* on a mismatch: the dword that differs */
    pop %edi
    jne 3f
    jmp 2f
1:  repe scasb
    lea -1(%edi), %ebx
    pop %edi
    jne 3f
2:  PUTS "CHECK ok\n"
    jmp next
3:  PUTS "CHECK bad "
    mov %ebx, %eax
    call puthex32
    call space
    mov (%ebx), %eax
    call puthex32
    call newline
    jmp next

op_mark:
    PUTS "MARK "
    mov %ebx, %eax
    call puthex32
    call newline
    jmp next

done:
    PUTS "script: end\n"
    mov $EXIT_PASS, %eax
    jmp out
no_module:
    PUTS "script: no multiboot module\n"
    mov $EXIT_FAIL, %eax
    jmp out
bad_op:
    PUTS "BAD OP "
    call puthex32
    call newline
    mov $EXIT_FAIL, %eax
out:
    pop %ebp
    pop %edi
    pop %esi
    pop %ebx
    ret

    .section .rodata
    .p2align 2
optable:
    .long done, op_store32, op_store16, op_store8, op_load32, op_outl, op_inl, op_wait
    .long op_fill, op_check, op_mark, op_outw, op_outb, op_load8, op_load16

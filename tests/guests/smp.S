/* smp: starts the application processors with an INIT-SIPI-SIPI broadcast through the
 * LAPIC ICR, using a real-mode trampoline copied to 0x8000 (SIPI vector 0x08) that
 * enters 32-bit protected mode. Each AP prints "cpu <apic id> up" under a spinlock and
 * counts itself; the BSP waits (bounded, ~2^32 TSC cycles) for cpus-1 APs, prints
 * "smp: <n> of <cpus> cpus up" and exits EXIT_PASS if n == cpus, else EXIT_FAIL.
 * Command line: cpus=N (default 1). At most 16 APs get a stack; extra ones only count. */
#include "guest.h"

#define TRAMPOLINE   0x8000
#define MAX_APS      16
#define ICR_LO       (LAPIC_BASE + 0x300)
#define ICR_HI       (LAPIC_BASE + 0x310)
#define LAPIC_ID     (LAPIC_BASE + 0x20)
#define LAPIC_SVR    (LAPIC_BASE + 0xf0)

    .text
    .code32
    .globl main
main:
    push %ebx
    push %esi
    push %edi
    CMDLINE_UINT "cpus", 1
    mov %eax, expected
    orl $0x1ff, LAPIC_SVR       /* software-enable the LAPIC, spurious vector 0xff */
    PUTS "smp: bsp apic id "
    mov LAPIC_ID, %eax
    shr $24, %eax
    call putdec
    PUTS ", expecting "
    mov expected, %eax
    call putdec
    PUTS " cpus\n"

    mov $trampoline_start, %esi /* copy the trampoline below 1 MiB */
    mov $TRAMPOLINE, %edi
    mov $trampoline_end - trampoline_start, %ecx
    rep movsb

    call icr_wait
    movl $0, ICR_HI
    movl $0x000c4500, ICR_LO    /* INIT, assert, all excluding self */
    mov $30000000, %eax         /* ~10 ms */
    call delay_tsc
    mov $2, %ebx
1:  call icr_wait
    movl $0x000c4600 | (TRAMPOLINE >> 12), ICR_LO   /* STARTUP */
    mov $600000, %eax           /* ~200 us */
    call delay_tsc
    dec %ebx
    jnz 1b

    /* wait for expected-1 APs, bounded by 2^32 TSC cycles */
    rdtsc
    mov %edx, %esi
    mov %eax, %edi
2:  mov expected, %eax
    dec %eax
    cmp %eax, ap_count
    jge 3f
    pause
    rdtsc
    sub %edi, %eax
    sbb %esi, %edx
    jz 2b

3:  mov $print_lock, %eax
    call spin_lock
    PUTS "smp: "
    mov ap_count, %eax
    inc %eax
    mov %eax, %ebx
    call putdec
    PUTS " of "
    mov expected, %eax
    call putdec
    PUTS " cpus up\n"
    mov $print_lock, %eax
    call spin_unlock
    mov $EXIT_PASS, %eax
    cmp expected, %ebx
    je 4f
    mov $EXIT_FAIL, %eax
4:  pop %edi
    pop %esi
    pop %ebx
    ret

icr_wait:                       /* until the previous IPI is delivered */
    testl $0x1000, ICR_LO
    jz 1f
    pause
    jmp icr_wait
1:  ret

/* delay_tsc(%eax = TSC cycles) */
delay_tsc:
    push %ebx
    push %ecx
    push %edx
    mov %eax, %ebx
    rdtsc
    mov %eax, %ecx
1:  pause
    rdtsc
    sub %ecx, %eax
    cmp %ebx, %eax
    jb 1b
    pop %edx
    pop %ecx
    pop %ebx
    ret

/* ------------------------------------------------------------------ APs */
ap_entry32:
    mov $SEL_DATA32, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, ap_next
    cmp $MAX_APS, %eax
    jae ap_nostack
    inc %eax
    shl $12, %eax
    add $ap_stacks, %eax
    mov %eax, %esp
    mov $print_lock, %eax
    call spin_lock
    PUTS "cpu "
    mov LAPIC_ID, %eax
    shr $24, %eax
    call putdec
    PUTS " up\n"
    lock incl ap_count          /* counted after printing, so the summary comes last */
    mov $print_lock, %eax
    call spin_unlock
ap_halt:
    cli
    hlt
    jmp ap_halt
ap_nostack:
    lock incl ap_count
    jmp ap_halt

/* Real-mode trampoline, copied to TRAMPOLINE; runs with CS = TRAMPOLINE >> 4, IP = 0. */
    .code16
trampoline_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl tr_gdtr - trampoline_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .p2align 2
tr_gdtr:
    .word gdt_limit
    .long gdt
trampoline_end:

    .data
    .p2align 2
expected:   .long 0
ap_count:   .long 0
ap_next:    .long 0
print_lock: .long 0

    .bss
    .p2align 12
ap_stacks:
    .skip MAX_APS * 4096

    .section .note.GNU-stack, "", @progbits

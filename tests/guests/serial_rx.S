/* serial_rx: interrupt-driven COM1 input. Enables the UART's received-data interrupt
 * (IER bit 0, MCR OUT2), takes IRQ4 through the 8259 at vector 0x24, and echoes each
 * received character from the handler: a-z uppercased, CR shown as LF, others as is.
 * On 'q' it prints "\nbye <count>\n" (count = characters before the 'q') and exits
 * EXIT_PASS. Long mode by default (runs on the host PVM KVM); lm=0 uses 32-bit iret.
 * Output before input: "serial_rx: mode=long|32\nready\n". */
#include "guest.h"

    .text
    .code32
    .globl main
main:
    CMDLINE_UINT "lm", 1
    mov %eax, long_mode
    PUTS "serial_rx: mode="
    test %eax, %eax
    je 1f
    PUTS "long\n"
    jmp 2f
1:  PUTS "32\n"
2:  mov $0xffef, %ax            /* only IRQ4 unmasked */
    call pic_init
    cmpl $0, long_mode
    je 3f
    mov $main64, %eax
    jmp enter_long_mode

3:  call idt_init
    mov $0x24, %eax
    mov $irq4_handler, %edx
    call idt_set
    call uart_rx_enable
    PUTS "ready\n"
4:  sti
    hlt
    cli
    cmpl $0, done
    je 4b
    PUTS "\nbye "
    mov count, %eax
    call putdec
    call newline
    mov $EXIT_PASS, %eax
    ret

/* Both modes: IER = received data available, MCR = DTR | RTS | OUT2 (gates the IRQ). */
uart_rx_enable:
    mov $COM1+4, %dx
    mov $0x0b, %al
    out %al, %dx
    mov $COM1+1, %dx
    mov $0x01, %al
    out %al, %dx
    ret

irq4_handler:
    push %eax
    push %edx
1:  mov $COM1+5, %dx            /* drain everything received */
    in %dx, %al
    test $1, %al
    jz 2f
    mov $COM1, %dx
    in %dx, %al
    call echo_char
    jmp 1b
2:  mov $0x20, %al
    out %al, $0x20
    pop %edx
    pop %eax
    iret

/* echo_char(%al), 32-bit mode: record or echo one received character. */
echo_char:
    cmpl $0, done
    jne 9f
    cmp $'q', %al
    jne 1f
    movl $1, done
    ret
1:  incl count
    cmp $'\r', %al
    jne 2f
    mov $'\n', %al
2:  cmp $'a', %al
    jb 3f
    cmp $'z', %al
    ja 3f
    sub $0x20, %al
3:  call putc
9:  ret

    .code64
main64:
    call idt64_init
    mov $0x24, %eax
    mov $irq4_handler64, %edx
    call idt64_set
    mov $COM1+4, %dx
    mov $0x0b, %al
    out %al, %dx
    mov $COM1+1, %dx
    mov $0x01, %al
    out %al, %dx
    PUTS64 "ready\n"
1:  sti
    hlt
    cli
    cmpl $0, done(%rip)
    je 1b
    PUTS64 "\nbye "
    mov count(%rip), %eax
    call putdec64
    call newline64
    mov $EXIT_PASS, %eax
    jmp debug_exit64

irq4_handler64:
    push %rax
    push %rdx
1:  mov $COM1+5, %dx
    in %dx, %al
    test $1, %al
    jz 4f
    mov $COM1, %dx
    in %dx, %al
    cmpl $0, done(%rip)
    jne 1b
    cmp $'q', %al
    jne 2f
    movl $1, done(%rip)
    jmp 1b
2:  incl count(%rip)
    cmp $'\r', %al
    jne 3f
    mov $'\n', %al
3:  cmp $'a', %al
    jb 5f
    cmp $'z', %al
    ja 5f
    sub $0x20, %al
5:  call putc64
    jmp 1b
4:  mov $0x20, %al
    out %al, $0x20
    pop %rdx
    pop %rax
    iretq

    .data
    .p2align 2
done:      .long 0
count:     .long 0
long_mode: .long 0

    .section .note.GNU-stack, "", @progbits

/* counter: increments the 32-bit counter at guest-physical 0x200000 forever and prints
 * "count <hex>" on COM1 every 2^20 increments; never exits. For QMP stop/cont tests:
 * the value in memory stops moving while the VM is stopped.
 * Output: "counter: addr 0x00200000\n", then "count 0x00100000\n", "count 0x00200000\n", ... */
#include "guest.h"

#define COUNTER_ADDR 0x200000

    .text
    .globl main
main:
    PUTS "counter: addr "
    mov $COUNTER_ADDR, %eax
    call puthex32
    call newline
    movl $0, COUNTER_ADDR
1:  incl COUNTER_ADDR
    testl $0xfffff, COUNTER_ADDR
    jnz 1b
    PUTS "count "
    mov COUNTER_ADDR, %eax
    call puthex32
    call newline
    jmp 1b

    .section .note.GNU-stack, "", @progbits

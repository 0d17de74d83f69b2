/* vgafill: puts a picture on the Bochs/QEMU std VGA (PCI 1234:1111) and keeps it there,
 * for display benchmarks (bench/display.py) under any VMM that boots multiboot.
 *
 * Finds the adapter on PCI bus 0 through configuration mechanism #1, gives BAR0 (the
 * linear framebuffer) an address when nothing assigned one (bar=ADDR, default
 * 0xe0000000), turns on memory and I/O decoding, sets a DISPI mode (w=, h=, default
 * 1024x768, 32 bpp, LFB on), unblanks the attribute controller and copies the first multiboot module (the picture,
 * w*h*4 bytes of XRGB) into the framebuffer. Prints "vgafill: ready WxH lfb ADDR".
 *
 * Then it idles. change=N (PIT ticks of ~55 ms, default 0 = never) inverts a 64x64
 * block every N ticks, for a "small change" case. The timer handler never returns with
 * iret (32-bit iret at CPL0 fails on the host's PVM KVM): it resets the stack and goes
 * back to the sti; hlt loop.
 * Fails (EXIT_FAIL) with a line saying why: no adapter, no module, a refused mode. */
#include "guest.h"

#define PCI_ADDR        0xcf8
#define PCI_DATA        0xcfc
#define VGA_ID          0x11111234      /* device << 16 | vendor */
#define DISPI_INDEX     0x1ce
#define DISPI_DATA      0x1cf
#define DISPI_XRES      1
#define DISPI_YRES      2
#define DISPI_BPP       3
#define DISPI_ENABLE    4
#define DISPI_ON_LFB    0x41            /* ENABLED | LFB_ENABLED */
#define MBI_MODS_COUNT  20
#define MBI_MODS_ADDR   24
#define BLOCK           64

    .text
    .globl main
main:
    push %ebx
    push %esi
    push %edi
    push %ebp
    /* --- the adapter: bus 0, device 0..31, function 0 */
    mov $0x80000000, %ebx
1:  mov %ebx, %eax
    call pci_read
    cmp $VGA_ID, %eax
    je 2f
    add $0x800, %ebx
    cmp $0x80010000, %ebx
    jb 1b
    PUTS "vgafill: no 1234:1111 adapter on bus 0\n"
    jmp fail
2:  lea 0x10(%ebx), %eax            /* BAR0 */
    call pci_read
    and $0xfffffff0, %eax
    jnz 3f
    CMDLINE_UINT "bar", 0xe0000000
    mov %eax, %edx
    lea 0x10(%ebx), %eax
    call pci_write
    lea 0x10(%ebx), %eax
    call pci_read
    and $0xfffffff0, %eax
3:  mov %eax, lfb
    lea 0x04(%ebx), %eax            /* command: I/O and memory decoding on */
    call pci_read
    or $0x3, %eax
    mov %eax, %edx
    lea 0x04(%ebx), %eax
    call pci_write

    /* --- the mode */
    CMDLINE_UINT "w", 1024
    mov %eax, width
    CMDLINE_UINT "h", 768
    mov %eax, height
    mov $DISPI_ENABLE, %eax
    xor %edx, %edx
    call dispi_write
    mov $DISPI_XRES, %eax
    mov width, %edx
    call dispi_write
    mov $DISPI_YRES, %eax
    mov height, %edx
    call dispi_write
    mov $DISPI_BPP, %eax
    mov $32, %edx
    call dispi_write
    mov $DISPI_ENABLE, %eax
    mov $DISPI_ON_LFB, %edx
    call dispi_write
    /* unblank, as Linux's bochs driver does: reset the attribute flip-flop, then set the
     * palette address source bit (PAS) in the attribute index; without it a VGA shows nothing */
    mov $0x3da, %dx
    in %dx, %al
    mov $0x3c0, %dx
    mov $0x20, %al
    out %al, %dx
    mov $DISPI_XRES, %eax
    call dispi_read
    cmp width, %eax
    jne 4f
    mov $DISPI_YRES, %eax
    call dispi_read
    cmp height, %eax
    je 5f
4:  PUTS "vgafill: the adapter refused the mode\n"
    jmp fail

    /* --- the picture: the first module, at most w*h*4 bytes */
5:  mov mb_info, %eax
    testl $8, MBI_FLAGS(%eax)
    jz 6f
    cmpl $0, MBI_MODS_COUNT(%eax)
    je 6f
    mov MBI_MODS_ADDR(%eax), %eax
    mov (%eax), %esi                /* mod_start */
    mov 4(%eax), %ecx               /* mod_end */
    sub %esi, %ecx
    mov width, %eax
    mull height
    shl $2, %eax
    cmp %eax, %ecx
    jbe 7f
    mov %eax, %ecx
7:  shr $2, %ecx
    mov lfb, %edi
    rep movsl
    PUTS "vgafill: ready "
    mov width, %eax
    call putdec
    PUTS "x"
    mov height, %eax
    call putdec
    PUTS " lfb "
    mov lfb, %eax
    call puthex32
    call newline
    jmp idle
6:  PUTS "vgafill: no multiboot module (the picture)\n"
fail:
    mov $EXIT_FAIL, %eax
    pop %ebp
    pop %edi
    pop %esi
    pop %ebx
    ret

/* Idle for good: with change=0 interrupts stay off; otherwise PIT ticks repaint. */
idle:
    CMDLINE_UINT "change", 0
    mov %eax, change
    test %eax, %eax
    jnz 1f
2:  cli
    hlt
    jmp 2b
1:  call idt_init
    mov $0x20, %eax
    mov $tick, %edx
    call idt_set
    mov $0xfffe, %ax                /* only IRQ0 */
    call pic_init
    mov $0x34, %al                  /* channel 0, mode 2, divisor 65536: ~18.2 Hz */
    out %al, $0x43
    xor %al, %al
    out %al, $0x40
    out %al, $0x40
wait:
    mov $stack_top, %esp
    sti
    hlt
    jmp wait

tick:
    mov $0x20, %al                  /* EOI */
    out %al, $0x20
    incl ticks
    mov ticks, %eax
    cmp change, %eax
    jb wait
    movl $0, ticks
    /* invert the BLOCK x BLOCK square at (w/2, h/2) */
    mov height, %eax
    shr %eax
    mull width
    mov width, %edx
    shr %edx
    add %edx, %eax
    shl $2, %eax
    add lfb, %eax
    mov $BLOCK, %ebx
3:  mov $BLOCK, %ecx
    mov %eax, %edi
4:  notl (%edi)
    add $4, %edi
    dec %ecx
    jnz 4b
    mov width, %edx
    lea (%eax,%edx,4), %eax
    dec %ebx
    jnz 3b
    jmp wait

/* pci_read(%eax = config address) -> %eax; pci_write(%eax = address, %edx = value) */
pci_read:
    push %edx
    mov $PCI_ADDR, %dx
    out %eax, %dx
    mov $PCI_DATA, %dx
    in %dx, %eax
    pop %edx
    ret

pci_write:
    push %edx
    push %edx
    mov $PCI_ADDR, %dx
    out %eax, %dx
    pop %eax
    mov $PCI_DATA, %dx
    out %eax, %dx
    pop %edx
    ret

/* dispi_write(%eax = index, %edx = value); dispi_read(%eax = index) -> %eax */
dispi_write:
    push %edx
    push %edx
    mov $DISPI_INDEX, %dx
    out %ax, %dx
    pop %eax
    mov $DISPI_DATA, %dx
    out %ax, %dx
    pop %edx
    ret

dispi_read:
    push %edx
    mov $DISPI_INDEX, %dx
    out %ax, %dx
    mov $DISPI_DATA, %dx
    xor %eax, %eax
    in %dx, %ax
    pop %edx
    ret

    .data
    .p2align 2
lfb:    .long 0
width:  .long 0
height: .long 0
change: .long 0
ticks:  .long 0

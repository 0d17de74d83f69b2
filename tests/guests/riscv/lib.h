/* Freestanding helpers for the C test guests (implemented in rt.S and lib.c). */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H
typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef unsigned char u8;
void rt_putc(int c);
void rt_puts(const char *s);
void rt_puthex(u64 v);
void rt_putdec(u64 v);
void rt_nl(void);
void rt_pass(void) __attribute__((noreturn));
void rt_fail(int code) __attribute__((noreturn));
void show(const char *label, u64 v);      /* "label=<hex>\n" */
void *memcpy(void *d, const void *s, unsigned long n);
void *memset(void *d, int c, unsigned long n);
#define CSRR(name) ({ u64 v_; __asm__ volatile("csrr %0, " #name : "=r"(v_)); v_; })
#define CSRW(name, v) __asm__ volatile("csrw " #name ", %0" :: "r"((u64)(v)))
/* Workload guests run their work REPEAT times (bench/tcg_mips.py builds them with -DREPEAT=n);
 * every round does identical work.  The count is read from a volatile so that the code is the
 * same for every n (no peeling/unrolling), and BARRIER() stops the compiler merging rounds. */
#ifndef REPEAT
#define REPEAT 1
#endif
static volatile const int guest_repeat = REPEAT;
#define BARRIER() __asm__ volatile("" ::: "memory")
#endif

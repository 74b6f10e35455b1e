// semiexit N: exit QEMU with status N (decimal) via Arm semihosting SYS_EXIT, once the
// serial console has sent what was written to it: SYS_EXIT stops QEMU at once, and the
// UART driver may still hold the guest's last lines (seen: a run's last two lines lost).
// QEMU: -semihosting-config enable=on,target=native,userspace=on
    .text
    .globl _start
_start:
    ldr   x2, [sp]          // argc
    mov   x3, #0            // status
    cmp   x2, #2
    b.lt  1f
    ldr   x4, [sp, #16]     // argv[1]
2:  ldrb  w5, [x4], #1
    sub   w5, w5, #'0'
    cmp   w5, #9
    b.hi  1f                // stop at NUL or any non-digit
    mov   x6, #10
    madd  x3, x3, x6, x5
    b     2b
1:  mov   x0, #1            // stdout: the console
    mov   x1, #0x5409       // TCSBRK with a non-zero argument: tcdrain(1)
    mov   x2, #1
    mov   x8, #29           // __NR_ioctl (asm-generic); not a tty: ENOTTY, harmless
    svc   #0
    adr   x1, block
    str   x3, [x1, #8]
    mov   x0, #0x18         // SYS_EXIT
    hlt   #0xf000
    mov   x0, #127          // not under semihosting: exit(127)
    mov   x8, #93           // __NR_exit (asm-generic)
    svc   #0
    .data
    .balign 8
block:
    .quad 0x20026           // ADP_Stopped_ApplicationExit
    .quad 0

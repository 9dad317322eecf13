// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The Go amd64 register ABI (ABIInternal, Go >= 1.17) as seen from a uprobe.
// Include after vmlinux.h and zerotel.h.
#ifndef ZEROTEL_GOABI_H
#define ZEROTEL_GOABI_H

// Integer arguments in order; a method's receiver is the first.
#define GO_ARG1(regs) ((void *)(regs)->ax)
#define GO_ARG2(regs) ((void *)(regs)->bx)
#define GO_ARG3(regs) ((void *)(regs)->cx)
#define GO_ARG4(regs) ((void *)(regs)->di)
// The running goroutine's g, at function entry and at the stack check.
#define GO_G(regs) ((void *)(regs)->r14)

#define X86_FLAGS_CF 0x0001
#define X86_FLAGS_ZF 0x0040

// A probe placed on the JBE after a function's stack check sees the flags of
// the CMP. JBE jumps (to morestack) when CF or ZF is set: the stack is then
// grown and the function starts over, so this hit must be ignored or the
// operation would be counted twice. at_jump says whether the probe sits on
// such a jump (else it is at the entry and the flags mean nothing).
static __always_inline bool go_stack_will_grow(struct pt_regs *regs, bool at_jump)
{
	return at_jump && (regs->flags & (X86_FLAGS_CF | X86_FLAGS_ZF));
}

// A Go string header: pointer and length.
struct go_string {
	const char *ptr;
	__s64 len;
};

static __always_inline void *go_read_ptr(const void *base, __u64 off)
{
	void *p = NULL;
	bpf_probe_read_user(&p, sizeof(p), base + off);
	return p;
}

static __always_inline __s64 go_read_int(const void *base, __u64 off)
{
	__s64 v = 0;
	bpf_probe_read_user(&v, sizeof(v), base + off);
	return v;
}

#endif

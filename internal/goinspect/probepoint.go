package goinspect

// Where to put the uprobe of a Go function.
//
// On x86 the kernel either EMULATES the probed instruction (it updates the
// registers itself and returns: ~0.8 µs a hit on the lab machine) or copies
// it to an out-of-line slot and SINGLE-STEPS it there (a second trap: ~11.5
// µs a hit), see shared/KERNEL.md. It emulates (arch/x86/kernel/uprobes.c,
// branch_setup_xol_ops and push_setup_xol_ops): JMP rel8/rel32, CALL rel32,
// Jcc rel8/rel32, one-byte NOP (0x90), PUSH of a 64-bit register; recent
// kernels also emulate multi-byte NOPs (added for USDT probes), older ones
// do not, so they are not counted. Everything else (MOV, LEA, CMP, SUB, ...)
// is single-stepped.
//
// The rule (ProbePoint):
//
//  1. Most Go functions start with the stack-bound check that cmd/internal/
//     obj/x86 (stacksplit) emits:
//
//     CMPQ SP, 0x10(R14)                                 frame <= 128 bytes
//     LEAQ -N(SP), R12; CMPQ R12, 0x10(R14)              frame <= 4096 bytes
//     MOVQ SP, R12; SUBQ $N, R12; JCS ms; CMPQ R12, 0x10(R14)   larger frames
//     JBE morestack                                      (always, right after the CMP)
//
//     ABI0 (assembly) functions first load g: MOVQ FS:-8, R14; with
//     -d=maymorestack there is a CALL first. 0x10(R14) is g.stackguard0
//     (0x18, stackguard1, for the runtime's C-ABI functions).
//     So: decode at most maxPrologue instructions from the entry, stopping
//     at the first RET or unconditional JMP; find a CMP of a register with
//     [R14+0x10] or [R14+0x18] immediately followed by JBE whose target is
//     inside the function (the morestack call sits at its end). That JBE is
//     the probe point: Kind "stack-check-jump". The argument registers are
//     untouched up to there (the prologue only uses SP, R12 and R14), so the
//     BPF program reads the same arguments as at the entry. When the jump is
//     taken (CF or ZF set in pt_regs->flags), the function calls morestack
//     and then restarts from its entry, so the probe fires again: the BPF
//     program must ignore the hit where the jump is taken.
//  2. No stack check (NOSPLIT functions, small leaves): if the entry
//     instruction is one the kernel emulates (in Go: PUSHQ BP of a function
//     with a frame, or a NOP), Kind "entry" at the entry.
//  3. Otherwise Kind "entry-singlestep" at the entry: correct but ~15 times
//     dearer a hit; callers should say so (or pick another function).

import (
	"debug/elf"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// Kinds of ProbePoint.
const (
	KindStackCheckJump  = "stack-check-jump"
	KindEntry           = "entry"
	KindEntrySingleStep = "entry-singlestep"
)

// maxPrologue bounds the decoding: the longest prologue above is 6
// instructions (with the g load), 8 with maymorestack's CALL and a PUSH/POP.
const maxPrologue = 12

// ProbePoint is where to attach the uprobe of a function.
type ProbePoint struct {
	Func        Func
	Offset      uint64 // file offset to attach at (link.UprobeOptions{Address: Offset})
	Addr        uint64 // virtual address of the same instruction
	Kind        string // KindStackCheckJump, KindEntry or KindEntrySingleStep
	Instruction string // the probed instruction in Go syntax, for logs, e.g. "JBE 0x65ad54"
}

// ProbePoint picks where to put a uprobe for fn so that the kernel emulates
// the probed instruction instead of single-stepping it. See the rule above.
func (b *Binary) ProbePoint(fn Func) (ProbePoint, error) {
	if b.elf.Machine != elf.EM_X86_64 {
		return ProbePoint{}, fmt.Errorf("goinspect: %s: ProbePoint supports amd64 only, not %s", b.describe(), b.GOARCH)
	}
	size := fn.Size
	if size == 0 || size > 256 {
		size = 256 // enough for any prologue; Size 0 means unknown
	}
	code := make([]byte, size)
	n, err := b.osf.ReadAt(code, int64(fn.Offset))
	if n == 0 {
		return ProbePoint{}, fmt.Errorf("goinspect: %s: reading %s at file offset %#x: %v", b.describe(), fn.Name, fn.Offset, err)
	}
	code = code[:n]

	var first x86asm.Inst
	pos := 0
	var prevCmp bool // the previous instruction is the stack-bound CMP
	for i := 0; i < maxPrologue && pos < len(code); i++ {
		inst, err := x86asm.Decode(code[pos:], 64)
		if err != nil {
			if i == 0 {
				return ProbePoint{}, fmt.Errorf("goinspect: %s: decoding the entry of %s: %w", b.describe(), fn.Name, err)
			}
			break
		}
		if i == 0 {
			first = inst
		}
		addr := fn.Addr + uint64(pos)
		if prevCmp && inst.Op == x86asm.JBE {
			if rel, ok := inst.Args[0].(x86asm.Rel); ok {
				target := addr + uint64(inst.Len) + uint64(int64(rel))
				if target > fn.Addr && (fn.Size == 0 || target < fn.Addr+fn.Size) {
					return ProbePoint{
						Func:        fn,
						Offset:      fn.Offset + uint64(pos),
						Addr:        addr,
						Kind:        KindStackCheckJump,
						Instruction: x86asm.GoSyntax(inst, addr, nil),
					}, nil
				}
			}
		}
		prevCmp = isStackBoundCmp(inst)
		if inst.Op == x86asm.RET || inst.Op == x86asm.JMP {
			break
		}
		pos += inst.Len
	}

	pp := ProbePoint{Func: fn, Offset: fn.Offset, Addr: fn.Addr,
		Instruction: x86asm.GoSyntax(first, fn.Addr, nil)}
	if kernelEmulates(first) {
		pp.Kind = KindEntry
	} else {
		pp.Kind = KindEntrySingleStep
	}
	return pp, nil
}

// isStackBoundCmp matches CMP reg, [R14+0x10] (g.stackguard0) or
// [R14+0x18] (g.stackguard1), in Intel operand order; Go syntax prints it
// as CMPQ reg, 0x10(R14).
func isStackBoundCmp(inst x86asm.Inst) bool {
	if inst.Op != x86asm.CMP {
		return false
	}
	if _, ok := inst.Args[0].(x86asm.Reg); !ok {
		return false
	}
	m, ok := inst.Args[1].(x86asm.Mem)
	return ok && m.Base == x86asm.R14 && m.Index == 0 && (m.Disp == 0x10 || m.Disp == 0x18)
}

// kernelEmulates says whether the x86 uprobe code emulates inst instead of
// single-stepping it (see the file comment). Conservative: when in doubt, no.
func kernelEmulates(inst x86asm.Inst) bool {
	for _, p := range inst.Prefix {
		if p&0xff == 0x66 { // 16-bit operand overrides are refused by the kernel
			return false
		}
	}
	switch inst.Op {
	case x86asm.NOP:
		return inst.Len == 1 // 0x90; multi-byte NOPs only on recent kernels
	case x86asm.PUSH:
		r, ok := inst.Args[0].(x86asm.Reg)
		return ok && r >= x86asm.RAX && r <= x86asm.R15
	case x86asm.JMP, x86asm.CALL:
		_, ok := inst.Args[0].(x86asm.Rel)
		return ok
	case x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JG, x86asm.JGE,
		x86asm.JL, x86asm.JLE, x86asm.JNE, x86asm.JNO, x86asm.JNP, x86asm.JNS, x86asm.JO,
		x86asm.JP, x86asm.JS:
		_, ok := inst.Args[0].(x86asm.Rel)
		return ok
	}
	return false
}

package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// uprobeTarget is the function the uprobe check probes and calls; it must
// stay a real, out-of-line function in the binary.
//
//go:noinline
func uprobeTarget(x int) int { return x*3 + 1 }

var uprobeSink int

func checkUprobe(*probeEnv) error {
	// An array map counts hits, so we know the probe fires, not just attaches.
	hits, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "zt_uprobe_hits", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		return fmt.Errorf("create map: %w", err)
	}
	defer hits.Close()

	prog, err := load("zt_uprobe", ebpf.Kprobe, asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word), // key = 0
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, hits.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	})
	if err != nil {
		return err
	}
	defer prog.Close()

	ex, err := link.OpenExecutable("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("open own executable: %w", err)
	}
	fn := runtime.FuncForPC(reflect.ValueOf(uprobeTarget).Pointer())
	// Only our own process: other processes running the same binary must
	// not be disturbed.
	opts := &link.UprobeOptions{PID: os.Getpid()}
	l, err := ex.Uprobe(fn.Name(), prog, opts)
	if errors.Is(err, link.ErrNoSymbol) {
		// Stripped binary (-ldflags=-s): locate the function by the file
		// offset of its code instead of by symbol.
		if opts.Address, err = fileOffset(fn.Entry()); err == nil {
			l, err = ex.Uprobe("", prog, opts)
		}
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}

	uprobeSink += uprobeTarget(uprobeSink)
	var n uint64
	lerr := hits.Lookup(uint32(0), &n)
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	switch {
	case lerr != nil:
		return fmt.Errorf("read hit counter: %w", lerr)
	case n == 0:
		return errors.New("uprobe attached but never fired")
	}
	return nil
}

// fileOffset maps a code address of this process to its offset in the
// executable file, using /proc/self/maps (works for PIE and non-PIE).
func fileOffset(pc uintptr) (uint64, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		start, end, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		lo, err1 := strconv.ParseUint(start, 16, 64)
		hi, err2 := strconv.ParseUint(end, 16, 64)
		off, err3 := strconv.ParseUint(fields[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || uint64(pc) < lo || uint64(pc) >= hi {
			continue
		}
		return uint64(pc) - lo + off, nil
	}
	return 0, fmt.Errorf("address %#x not found in /proc/self/maps", pc)
}

package http

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/zerotel/zerotel/internal/bpfprobe"
	"github.com/zerotel/zerotel/internal/goinspect"
	"github.com/zerotel/zerotel/internal/goprobe"
)

// Tracer is the http probe family attached to one Go binary.
type Tracer struct {
	Binary *goinspect.Binary
	probes *goprobe.Probes
}

// Sampling is the kernel-side sampler: Ratio of root traces kept; with
// ParentBased an incoming traceparent's sampled flag decides instead.
type Sampling struct {
	Ratio       float64
	ParentBased bool
}

// Attach loads the http probes for t. Problems that leave some probes
// working are returned as warnings; an error means nothing is traced.
func Attach(t goprobe.Target, s Sampling) (*Tracer, []error, error) {
	spec, err := loadHttp()
	if err != nil {
		return nil, nil, fmt.Errorf("net/http: %w", err)
	}
	if err := setSampling(spec, s); err != nil {
		return nil, nil, err
	}
	consts := map[string]any{}
	exe, err := os.Stat(t.Binary.Path)
	if err != nil {
		return nil, nil, err
	}
	st := exe.Sys().(*syscall.Stat_t)
	if t.PID == 0 {
		// Every process of the executable, also those started later.
		consts["target_ino"] = st.Ino
		consts["target_dev"] = kernelDev(st.Dev)
	}
	probes, warnings, err := goprobe.Load("net/http", t, spec, consts, fields, uprobes, tracepoints)
	if err != nil {
		return nil, warnings, err
	}
	tr := &Tracer{Binary: t.Binary, probes: probes}
	for _, tp := range probes.Missing {
		if tp.Program == httpProgZtHttpSockRecv {
			// No socket read or read() tracepoint:
			// request starts come from the readTransfer uprobe instead.
			if err := probes.AttachLazy(readTransferSymbol); err != nil {
				warnings = append(warnings, err)
			}
		}
	}
	pids := []int{t.PID}
	if t.PID == 0 {
		pids = processesOf(st)
	}
	for _, pid := range pids {
		tr.watch(uint32(pid))
	}
	return tr, warnings, nil
}

// readTransferSymbol marks a request's start where read() cannot (TLS).
const readTransferSymbol = "net/http.readTransfer"

// watch makes the kernel side look at the process's read() calls.
func (t *Tracer) watch(pid uint32) {
	_ = t.probes.Coll.Maps[httpMapTraced].Put(pid, uint8(1))
}

// kernelDev converts a stat st_dev to the kernel's internal dev_t
// (major << 20 | minor), which the exec hook compares with.
func kernelDev(dev uint64) uint32 {
	return unix.Major(dev)<<20 | unix.Minor(dev)
}

// processesOf lists the running processes whose executable is the file st.
func processesOf(st *syscall.Stat_t) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var x syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/exe", pid), &x) == nil && x.Ino == st.Ino && x.Dev == st.Dev {
			pids = append(pids, pid)
		}
	}
	return pids
}

func setSampling(spec *ebpf.CollectionSpec, s Sampling) error {
	bound := ^uint64(0)
	if s.Ratio < 1 {
		bound = uint64(max(s.Ratio, 0) * (1 << 63))
	}
	if err := spec.Variables["sample_bound"].Set(bound); err != nil {
		return err
	}
	return spec.Variables["parent_based"].Set(s.ParentBased)
}

// Close detaches everything.
func (t *Tracer) Close() error { return t.probes.Close() }

// Run hands each request to handle until ctx is done, and sweeps the maps
// of processes that exit.
func (t *Tracer) Run(ctx context.Context, handle func(*Event)) error {
	var rec httpHttpEvent
	return t.probes.ReadEvents(ctx, httpMapEvents, func(raw []byte) {
		if err := bpfprobe.Decode(raw, &rec, headerSize); err != nil {
			return
		}
		switch rec.Kind {
		case httpHttpKindHTTP_PROCESS_EXIT:
			t.sweep(rec.Pid)
		case httpHttpKindHTTP_NEED_START:
			sym := readTransferSymbol
			if err := t.probes.AttachLazy(sym); err != nil {
				slog.Warn("TLS requests will have no spans", "binary", t.Binary.Path, "error", err)
			} else {
				slog.Info("serves TLS: request starts now come from a second probe", "binary", t.Binary.Path, "symbol", sym)
			}
		default:
			handle(decode(&rec))
		}
	})
}

// sweep deletes what a process that exited left in the in-flight maps
// (requests it never finished).
func (t *Tracer) sweep(pid uint32) {
	t.sweepInflight(func(tag uint64) bool { return uint32(tag>>inflightPidShift) == pid })
	for _, name := range []string{httpMapClients, httpMapClientCalls, httpMapSplit} {
		m := t.probes.Coll.Maps[name]
		for _, k := range keys(m) {
			if binary.LittleEndian.Uint32(k[:4]) == pid {
				_ = m.Delete(k)
			}
		}
	}
}

// keys lists a hash map's keys (collected first: deleting while walking
// would restart the walk).
func keys(m *ebpf.Map) [][]byte {
	var out [][]byte
	var cur []byte
	for {
		next := make([]byte, m.KeySize())
		var err error
		if cur == nil {
			err = m.NextKey(nil, next)
		} else {
			err = m.NextKey(cur, next)
		}
		if err != nil {
			return out
		}
		out = append(out, next)
		cur = next
	}
}

// MapEntries counts the entries of the in-flight maps, for tests and health.
func (t *Tracer) MapEntries() map[string]int {
	counts := map[string]int{}
	for _, name := range []string{httpMapClients, httpMapClientCalls, httpMapActive, httpMapTraced, httpMapSplit} {
		counts[name] = len(keys(t.probes.Coll.Maps[name]))
	}
	counts[httpMapInflight] = t.sweepInflight(func(uint64) bool { return false })
	return counts
}

// inflightPidShift places the pid in an inflight slot's tag (see
// inflight_tag in http.h).
const inflightPidShift = 42

// sweepInflight frees the inflight slots whose tag drop reports true, and
// returns how many taken slots it left. The table is read in batches: one
// lookup per slot would be 8192 syscalls.
func (t *Tracer) sweepInflight(drop func(tag uint64) bool) int {
	m := t.probes.Coll.Maps[httpMapInflight]
	keys := make([]uint32, 1024)
	slots := make([]httpServerSlot, len(keys))
	var (
		cursor ebpf.MapBatchCursor
		kept   int
	)
	for {
		n, err := m.BatchLookup(&cursor, keys, slots, nil)
		for i := range n {
			switch {
			case slots[i].Tag == 0:
			case drop(slots[i].Tag):
				_ = m.Update(keys[i], httpServerSlot{}, ebpf.UpdateExist)
			default:
				kept++
			}
		}
		if err != nil {
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				slog.Warn("net/http: reading the in-flight table", "error", err)
			}
			return kept
		}
	}
}

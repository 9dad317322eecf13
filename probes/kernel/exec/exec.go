// Package exec traces every process start (and the exit of processes it saw
// start) on the host, from tracepoints only. See exec.bpf.c for the kernel
// side.
package exec

import (
	"context"
	"fmt"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zerotel/zerotel/internal/bpfprobe"
	"github.com/zerotel/zerotel/internal/kclock"
)

// Where the exec family attaches. execveat and the exit tracepoint only add
// detail, so the family runs without them.
var tracepoints = []bpfprobe.Tracepoint{
	{Group: "syscalls", Name: "sys_enter_execve", Program: execProgZtExecEnter},
	{Group: "sched", Name: "sched_process_exec", Program: execProgZtExecDone},
	{Group: "syscalls", Name: "sys_exit_execve", Program: execProgZtExecExit},
	{Group: "syscalls", Name: "sys_enter_execveat", Program: execProgZtExecatEnter, Optional: true},
	{Group: "syscalls", Name: "sys_exit_execveat", Program: execProgZtExecatExit, Optional: true},
	{Group: "sched", Name: "sched_process_exit", Program: execProgZtProcExit, Optional: true},
}

// Kind tells an exec from an exit.
type Kind string

const (
	KindExec Kind = "exec"
	KindExit Kind = "exit"
)

// Event is one process start or exit.
type Event struct {
	Kind  Kind      `json:"kind"`
	Start time.Time `json:"start"` // exec: execve entered; exit: the process's exec
	End   time.Time `json:"end"`   // exec: exec done or failed; exit: the exit
	PID   uint32    `json:"pid"`
	TID   uint32    `json:"tid,omitempty"` // exec: the calling thread
	PPID  uint32    `json:"ppid"`
	UID   uint32    `json:"uid"`
	Comm  string    `json:"comm"`

	// Exec only.
	Path          string        `json:"path,omitempty"`
	PathTruncated bool          `json:"path_truncated,omitempty"`
	Args          []string      `json:"args,omitempty"`
	ArgsTruncated bool          `json:"args_truncated,omitempty"`
	Errno         syscall.Errno `json:"errno,omitempty"` // non-zero: the exec failed
	Error         string        `json:"error,omitempty"` // Errno's name, e.g. ENOENT

	// Exit only: the wait status split.
	ExitCode int `json:"exit_code,omitempty"`
	Signal   int `json:"signal,omitempty"`
}

// Failed reports whether the exec failed.
func (e *Event) Failed() bool { return e.Errno != 0 }

// Tracer is the loaded exec probe family.
type Tracer struct {
	family *bpfprobe.Family
}

// Start loads and attaches the exec probes.
func Start() (*Tracer, error) {
	f, err := bpfprobe.LoadGenerated("exec", loadExec, tracepoints)
	if err != nil {
		return nil, err
	}
	return &Tracer{family: f}, nil
}

// Close detaches and unloads everything.
func (t *Tracer) Close() error { return t.family.Close() }

// Run hands each event to handle until ctx is done.
func (t *Tracer) Run(ctx context.Context, handle func(*Event)) error {
	var d Decoder
	return bpfprobe.ReadDecoded(ctx, t.family, execMapEvents, d.Decode, handle)
}

// Decoder turns raw ring-buffer records into Events, reusing its buffers.
type Decoder struct {
	exec execExecEvent
	exit execExitEvent
}

const (
	execHeaderSize = int(unsafe.Offsetof(execExecEvent{}.Args))
	exitSize       = int(unsafe.Sizeof(execExitEvent{}))
)

// Decode decodes one record.
func (d *Decoder) Decode(raw []byte) (*Event, error) {
	if len(raw) < 4 {
		return nil, fmt.Errorf("exec: short record of %d bytes", len(raw))
	}
	switch execEventKind(*(*uint32)(unsafe.Pointer(&raw[0]))) {
	case execEventKindEVENT_EXEC:
		if err := bpfprobe.Decode(raw, &d.exec, execHeaderSize); err != nil {
			return nil, fmt.Errorf("exec: %w", err)
		}
		return d.execEvent(), nil
	case execEventKindEVENT_EXIT:
		if err := bpfprobe.Decode(raw, &d.exit, exitSize); err != nil {
			return nil, fmt.Errorf("exec exit: %w", err)
		}
		return d.exitEvent(), nil
	}
	return nil, fmt.Errorf("exec: unknown record kind")
}

func (d *Decoder) execEvent() *Event {
	r := &d.exec
	ev := &Event{
		Kind:          KindExec,
		Start:         kclock.Time(r.StartNs),
		End:           kclock.Time(r.EndNs),
		PID:           r.Pid,
		TID:           r.Tid,
		PPID:          r.Ppid,
		UID:           r.Uid,
		Comm:          bpfprobe.CString(r.Comm[:]),
		Path:          bpfprobe.CString(r.Path[:]),
		PathTruncated: r.PathTruncated != 0,
		Args:          splitArgs(r.Args[:min(int(r.ArgsLen), len(r.Args))], int(r.Argc)),
		ArgsTruncated: r.ArgsTruncated != 0,
	}
	if r.Retval < 0 {
		ev.Errno = syscall.Errno(-r.Retval)
		ev.Error = errnoName(ev.Errno)
	}
	return ev
}

func (d *Decoder) exitEvent() *Event {
	r := &d.exit
	ws := syscall.WaitStatus(r.ExitCode)
	ev := &Event{
		Kind:  KindExit,
		Start: kclock.Time(r.StartNs),
		End:   kclock.Time(r.EndNs),
		PID:   r.Pid,
		PPID:  r.Ppid,
		Comm:  bpfprobe.CString(r.Comm[:]),
	}
	if ws.Signaled() {
		ev.Signal = int(ws.Signal())
	} else {
		ev.ExitCode = ws.ExitStatus()
	}
	return ev
}

// splitArgs splits the NUL-separated argument buffer.
func splitArgs(buf []int8, argc int) []string {
	args := make([]string, 0, argc)
	for len(buf) > 0 && len(args) < argc {
		s := bpfprobe.CString(buf)
		args = append(args, s)
		buf = buf[min(len(s)+1, len(buf)):]
	}
	return args
}

// errnoName gives the symbolic name of an errno ("ENOENT"), or its number.
func errnoName(e syscall.Errno) string {
	if name := unix.ErrnoName(e); name != "" {
		return name
	}
	return strconv.Itoa(int(e))
}

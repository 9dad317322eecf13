package exec

import (
	"slices"
	"testing"
	"unsafe"

	"github.com/zerotel/zerotel/internal/testutil"
)

func putCString(dst []int8, s string) {
	for i := range len(s) {
		dst[i] = int8(s[i])
	}
}

// rawExecRecord returns the bytes the kernel sends for one exec: the
// generated execExecEvent trimmed to its header plus ArgsLen bytes of
// arguments, as exec.bpf.c passes it to bpf_ringbuf_output.
func rawExecRecord(comm, path string, args []string) []byte {
	var r execExecEvent
	r.Kind = execEventKindEVENT_EXEC
	r.Pid, r.Tid, r.Ppid, r.Uid = 31337, 31337, 1200, 1000
	r.StartNs = 5_000_000_000
	r.EndNs = r.StartNs + 180_000
	putCString(r.Comm[:], comm)
	putCString(r.Path[:], path)
	off := 0
	for _, a := range args {
		putCString(r.Args[off:], a)
		off += len(a) + 1 // NUL separator, already zero
	}
	r.Argc = uint32(len(args))
	r.ArgsLen = uint32(off)
	size := execHeaderSize + off
	raw := make([]byte, size)
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&r)), size))
	return raw
}

func rawExitRecord() []byte {
	var r execExitEvent
	r.Kind = execEventKindEVENT_EXIT
	r.Pid, r.Ppid = 31337, 1200
	r.ExitCode = 1 << 8 // exit status 1
	r.StartNs = 5_000_000_000
	r.EndNs = r.StartNs + 42_000_000
	putCString(r.Comm[:], "curl")
	return testutil.RecordBytes(&r)
}

func benchDecode(b *testing.B, raw []byte, check func(*testing.B, *Event)) {
	var d Decoder
	testutil.BenchDecode(b, raw, d.Decode, check)
}

func BenchmarkDecodeExec(b *testing.B) {
	args := []string{"curl", "-sS", "-o", "/dev/null", "-H", "Accept: application/json", "https://example.com/api/v1/items"}
	raw := rawExecRecord("bash", "/usr/bin/curl", args)
	benchDecode(b, raw, func(b *testing.B, e *Event) {
		if e.Kind != KindExec || e.Path != "/usr/bin/curl" || e.Comm != "bash" || !slices.Equal(e.Args, args) || e.Failed() {
			b.Fatalf("decoded wrongly: %+v", *e)
		}
	})
}

func BenchmarkDecodeExit(b *testing.B) {
	benchDecode(b, rawExitRecord(), func(b *testing.B, e *Event) {
		if e.Kind != KindExit || e.ExitCode != 1 || e.Comm != "curl" {
			b.Fatalf("decoded wrongly: %+v", *e)
		}
	})
}

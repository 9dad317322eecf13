package bpfprobe

import (
	"fmt"
	"unsafe"
)

// Decode copies a raw ring-buffer record into v, a bpf2go-generated struct.
// The generated types mirror the C layout byte for byte (padding included)
// and BPF writes in host byte order, so a plain copy is the whole decode:
// no reflection, no per-field work. A record may be shorter than v (a
// program that trims unused buffer space); the rest of v is zeroed. It must
// hold at least min bytes.
func Decode[T any](raw []byte, v *T, min int) error {
	size := int(unsafe.Sizeof(*v))
	if len(raw) < min || len(raw) > size {
		return fmt.Errorf("record of %d bytes, want %d to %d", len(raw), min, size)
	}
	dst := unsafe.Slice((*byte)(unsafe.Pointer(v)), size)
	n := copy(dst, raw)
	clear(dst[n:])
	return nil
}

// CString returns the NUL-terminated string at the start of a C char array.
func CString(b []int8) string {
	bytes := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(b))), len(b))
	for i, c := range bytes {
		if c == 0 {
			return string(bytes[:i])
		}
	}
	return string(bytes)
}

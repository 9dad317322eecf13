package testutil

import (
	"testing"
	"unsafe"
)

// RecordBytes returns v's bytes, as the kernel hands a record of a
// bpf2go-generated type to user space.
func RecordBytes[T any](v *T) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))...)
}

// BenchDecode times decode on raw after check accepted its result, and
// reports events per second.
func BenchDecode[E any](b *testing.B, raw []byte, decode func([]byte) (E, error), check func(*testing.B, E)) {
	ev, err := decode(raw)
	if err != nil {
		b.Fatal(err)
	}
	check(b, ev)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := decode(raw); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

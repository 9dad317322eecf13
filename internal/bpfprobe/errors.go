package bpfprobe

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const tracefs = "/sys/kernel/tracing"

// EnsureTracefs mounts tracefs if it is not mounted: tracepoint attach needs
// it to look up tracepoint ids, and minimal hosts often lack the mount.
func EnsureTracefs() error {
	if _, err := os.Stat(tracefs + "/events"); err == nil {
		return nil
	}
	if err := unix.Mount("tracefs", tracefs, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted at %s and mounting it failed (%v): run `mount -t tracefs tracefs %s` as root", tracefs, err, tracefs)
	}
	return nil
}

// explain adds what to do to the errors users actually meet.
func explain(err error) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		return fmt.Errorf("the kernel verifier rejected a program (kernel too old or a zerotel bug; please report): %-8v", ve)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%w: run as root, or grant CAP_BPF and CAP_PERFMON (see `zerotel doctor`)", err)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: this kernel lacks it (see `zerotel doctor`)", err)
	}
	return err
}

// Package kclock turns the kernel timestamps that BPF programs take with
// bpf_ktime_get_boot_ns (CLOCK_BOOTTIME, which keeps counting through
// suspend) into wall-clock times.
package kclock

import (
	"time"

	"golang.org/x/sys/unix"
)

// offset is wall time minus boot time, measured once: re-reading it per
// event would cost a syscall for a drift of microseconds a day.
var offset = measure()

func measure() time.Duration {
	var ts unix.Timespec
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(before.UnixNano() - ts.Nano())
}

// Time converts a CLOCK_BOOTTIME nanosecond count to wall-clock time.
func Time(bootNs uint64) time.Time {
	return time.Unix(0, int64(bootNs)+int64(offset))
}

// Now returns the current CLOCK_BOOTTIME in nanoseconds.
func Now() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return uint64(ts.Nano())
}

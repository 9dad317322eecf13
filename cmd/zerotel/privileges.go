package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Capability numbers (linux/capability.h): x/sys/unix does not name
// CAP_BPF and CAP_PERFMON on every version.
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// checkPrivileges fails with exit code 2, naming what is missing, when this
// process cannot load BPF programs: root, or CAP_BPF plus CAP_PERFMON
// (CAP_SYS_ADMIN covers both on older kernels).
func checkPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return &exitError{code: 2, err: fmt.Errorf("cannot read capabilities: %v", err)}
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	return &exitError{code: 2, err: fmt.Errorf("loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON; running as uid %d without %s: run with sudo, or see `zerotel doctor`",
		os.Geteuid(), strings.Join(missing, " and "))}
}

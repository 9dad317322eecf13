package doctor

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	btfPath      = "/sys/kernel/btf/vmlinux"
	securityPath = "/sys/kernel/security"
	lockdownPath = securityPath + "/lockdown"
	tracefsPath  = "/sys/kernel/tracing"
)

// BTF says whether the kernel exposes its own type information, which
// tp_btf/fentry programs and CO-RE relocations in zerotel's probes need.
type BTF struct {
	Available bool   `json:"available"`
	Path      string `json:"path"`
	Error     string `json:"error,omitempty"`
}

// Lockdown is the kernel lockdown mode: none, integrity or confidentiality.
// "integrity" already forbids bpf_probe_write_user; "confidentiality" also
// forbids reading kernel memory, which breaks most tracing.
type Lockdown struct {
	Mode string `json:"mode"`
	// MountedSecurityfs is true when doctor had to mount securityfs to read it.
	MountedSecurityfs bool   `json:"mounted_securityfs,omitempty"`
	Error             string `json:"error,omitempty"`
}

// Capabilities are the effective capabilities that matter for eBPF.
// CAP_BPF+CAP_PERFMON (kernel >= 5.8) or CAP_SYS_ADMIN are enough.
type Capabilities struct {
	BPF      bool `json:"CAP_BPF"`
	Perfmon  bool `json:"CAP_PERFMON"`
	SysAdmin bool `json:"CAP_SYS_ADMIN"`
	// NetAdmin is needed on top for the network attach kinds (tc, sockops, sk_msg).
	NetAdmin bool   `json:"CAP_NET_ADMIN"`
	Error    string `json:"error,omitempty"`
}

// Tracefs is where the tracing filesystem lives; tracepoint ids are read
// from it, so tracepoint attachment fails without it.
type Tracefs struct {
	Path string `json:"path,omitempty"`
	// Mounted is true when doctor mounted tracefs itself.
	Mounted bool   `json:"mounted"`
	Error   string `json:"error,omitempty"`
}

func kernelRelease() (release, machine string, err error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", "", err
	}
	return unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:]), nil
}

func checkBTF() BTF {
	b := BTF{Path: btfPath}
	if _, err := os.Stat(btfPath); err != nil {
		b.Error = "no BTF at " + btfPath + " (kernel built without CONFIG_DEBUG_INFO_BTF?)"
		return b
	}
	b.Available = true
	return b
}

func checkLockdown() Lockdown {
	l := Lockdown{Mode: "unknown"}
	data, err := os.ReadFile(lockdownPath)
	if errors.Is(err, os.ErrNotExist) && !isMounted(securityPath, "securityfs") {
		if merr := unix.Mount("securityfs", securityPath, "securityfs", 0, ""); merr != nil {
			l.Error = "securityfs not mounted and mounting it failed: " + merr.Error()
			return l
		}
		l.MountedSecurityfs = true
		data, err = os.ReadFile(lockdownPath)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// securityfs is there but the lockdown LSM is not built in.
			l.Error = "no " + lockdownPath + " (lockdown LSM not enabled)"
		} else {
			l.Error = err.Error()
		}
		return l
	}
	if mode, ok := parseLockdown(string(data)); ok {
		l.Mode = mode
	} else {
		l.Error = fmt.Sprintf("cannot parse %s: %q", lockdownPath, strings.TrimSpace(string(data)))
	}
	return l
}

// parseLockdown picks the active (bracketed) mode out of e.g.
// "none [integrity] confidentiality".
func parseLockdown(s string) (string, bool) {
	for _, f := range strings.Fields(s) {
		if len(f) > 2 && f[0] == '[' && f[len(f)-1] == ']' {
			return f[1 : len(f)-1], true
		}
	}
	return "", false
}

func checkCapabilities() Capabilities {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return Capabilities{Error: "capget: " + err.Error()}
	}
	eff := uint64(data[1].Effective)<<32 | uint64(data[0].Effective)
	has := func(c int) bool { return eff&(1<<uint(c)) != 0 }
	return Capabilities{
		BPF:      has(unix.CAP_BPF),
		Perfmon:  has(unix.CAP_PERFMON),
		SysAdmin: has(unix.CAP_SYS_ADMIN),
		NetAdmin: has(unix.CAP_NET_ADMIN),
	}
}

func checkTracefs() Tracefs {
	if isMounted(tracefsPath, "tracefs") {
		return Tracefs{Path: tracefsPath}
	}
	err := unix.Mount("tracefs", tracefsPath, "tracefs", 0, "")
	if err == nil {
		return Tracefs{Path: tracefsPath, Mounted: true}
	}
	// Older systems only have tracefs auto-mounted below debugfs; that is
	// as good for reading tracepoint ids.
	for _, m := range mounts() {
		if m.fstype == "tracefs" {
			return Tracefs{Path: m.point}
		}
	}
	return Tracefs{Error: fmt.Sprintf("tracefs not mounted and `mount -t tracefs tracefs %s` failed: %v", tracefsPath, err)}
}

type mount struct{ point, fstype string }

// mounts parses /proc/self/mountinfo; errors yield an empty list, which
// callers treat as "not mounted".
func mounts() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mount{point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	return out
}

// unescapeMount undoes the octal escaping (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMounted(point, fstype string) bool {
	for _, m := range mounts() {
		if m.point == point && m.fstype == fstype {
			return true
		}
	}
	return false
}

// cgroup2Path finds the unified cgroup hierarchy. It is /sys/fs/cgroup on
// pure cgroup2 systems but e.g. /sys/fs/cgroup/unified on hybrid ones, and
// cgroup BPF programs (sockops) only attach to cgroup2.
func cgroup2Path() (string, error) {
	for _, m := range mounts() {
		if m.fstype == "cgroup2" {
			return m.point, nil
		}
	}
	return "", errors.New("no cgroup2 filesystem mounted")
}

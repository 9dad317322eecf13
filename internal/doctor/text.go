package doctor

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// row is one line of the text report; a row without status is a heading.
type row struct{ name, status, detail string }

func okOrMissing(ok bool) string {
	if ok {
		return "OK"
	}
	return "MISSING"
}

// WriteText writes the report for humans: one aligned line per check.
func (r *Report) WriteText(w io.Writer) error {
	caps := fmt.Sprintf("euid %d; CAP_BPF=%s CAP_PERFMON=%s CAP_SYS_ADMIN=%s",
		r.EUID, yesNo(r.Capabilities.BPF), yesNo(r.Capabilities.Perfmon), yesNo(r.Capabilities.SysAdmin))
	if r.Capabilities.Error != "" {
		caps += "; " + r.Capabilities.Error
	}
	btf := r.BTF.Path
	if r.BTF.Error != "" {
		btf = r.BTF.Error
	}
	lockdown := r.Lockdown.Mode
	if r.Lockdown.Error != "" {
		lockdown += " (" + r.Lockdown.Error + ")"
	}
	tracefs := r.Tracefs.Path
	if r.Tracefs.Mounted {
		tracefs += " (mounted by zerotel doctor)"
	}
	if r.Tracefs.Error != "" {
		tracefs = r.Tracefs.Error
	}

	rows := []row{
		{name: "Host"},
		{"kernel", "INFO", strings.TrimSpace(r.KernelRelease + " " + r.Arch)},
		{"privileges", okOrMissing(r.privileged()), caps},
		{"btf", okOrMissing(r.BTF.Available), btf},
		{"lockdown", "INFO", lockdown},
		{"tracefs", okOrMissing(r.Tracefs.Error == ""), tracefs},
		{name: "Attach kinds (real load+attach)"},
	}
	for _, p := range r.Probes {
		rows = append(rows, row{p.Name, okOrMissing(p.Available), p.Error})
	}
	rows = append(rows, row{name: "zerotel features"})
	for _, f := range r.Features {
		detail := f.Reason
		if f.Available {
			sep := ", "
			if f.AnyOf {
				sep = " or "
			}
			detail = "uses " + strings.Join(f.Needs, sep)
		}
		rows = append(rows, row{f.Name, okOrMissing(f.Available), detail})
	}

	width := 0
	for _, rw := range rows {
		if rw.status != "" {
			width = max(width, len(rw.name))
		}
	}
	bw := bufio.NewWriter(w)
	for i, rw := range rows {
		if rw.status == "" {
			if i > 0 {
				bw.WriteString("\n")
			}
			bw.WriteString(rw.name + "\n")
			continue
		}
		line := fmt.Sprintf("  %-*s  %-7s  %s", width, rw.name, rw.status, rw.detail)
		bw.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	fmt.Fprintf(bw, "\nzerotel never requires %s; their absence is fine.\n", joinAnd(r.NeverRequired))
	for _, e := range r.Errors {
		fmt.Fprintf(bw, "error: %s\n", e)
	}
	if problems := r.Problems(); len(problems) > 0 {
		bw.WriteString("\nzerotel cannot run here:\n")
		for _, p := range problems {
			bw.WriteString("  - " + p + "\n")
		}
	} else {
		bw.WriteString("\nzerotel core works on this machine.\n")
	}
	return bw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func joinAnd(s []string) string {
	if len(s) < 2 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

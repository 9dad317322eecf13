package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/zerotel/zerotel/probes/kernel/exec"
)

func traceExecCommand(opts *traceOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "exec",
		Short: "Show every process start on the host (and the exit of those it saw start)",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			s, err := opts.start(fmt.Sprintf("%-12s %-5s %7s %7s %5s %-16s %-8s %s", "TIME", "EVENT", "PID", "PPID", "UID", "COMM", "RESULT", "PATH / ARGS"))
			if err != nil {
				return err
			}
			t, err := exec.Start()
			if err != nil {
				return s.finish(err)
			}
			defer t.Close()
			slog.Info("tracing", "probe", "exec")
			metrics, err := exec.NewMetrics(s.tel.Meter)
			if err != nil {
				return s.finish(err)
			}
			return s.finish(t.Run(s.ctx, func(e *exec.Event) {
				metrics.Record(s.ctx, e)
				if !opts.match(e.PID, e.Comm) {
					return
				}
				if e.Kind == exec.KindExec {
					s.tel.Emit(e.Span())
				}
				s.out.Write(e, func() string { return execRow(e) })
			}))
		},
	}
}

func execRow(e *exec.Event) string {
	if e.Kind == exec.KindExit {
		head := fmt.Sprintf("%-12s %-5s %7d %7d %5s %-16s", shortTime(e.End), e.Kind, e.PID, e.PPID, "-", e.Comm)
		result := fmt.Sprintf("code=%d", e.ExitCode)
		if e.Signal != 0 {
			result = fmt.Sprintf("signal=%d", e.Signal)
		}
		return fmt.Sprintf("%s %-8s ran %s", head, result, e.End.Sub(e.Start).Round(1000))
	}
	head := fmt.Sprintf("%-12s %-5s %7d %7d %5d %-16s", shortTime(e.End), e.Kind, e.PID, e.PPID, e.UID, e.Comm)
	result := "ok"
	if e.Failed() {
		result = e.Error
	}
	args := strings.Join(e.Args, " ")
	if e.ArgsTruncated {
		args += " [...]"
	}
	return fmt.Sprintf("%s %-8s %s  %s", head, result, e.Path, args)
}

package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/zerotel/zerotel/probes/kernel/tcp"
)

func traceTCPCommand(opts *traceOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "tcp",
		Short: "Show every TCP connection on the host when it closes: owner, addresses, bytes, duration",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			s, err := opts.start(fmt.Sprintf("%-12s %7s %-16s %-7s %-22s %-22s %10s %10s %12s %s",
				"TIME", "PID", "COMM", "DIR", "LOCAL", "PEER", "SENT", "RECEIVED", "DURATION", "RESULT"))
			if err != nil {
				return err
			}
			t, err := tcp.Start()
			if err != nil {
				return s.finish(err)
			}
			defer t.Close()
			slog.Info("tracing", "probe", "tcp")
			metrics, err := tcp.NewMetrics(s.tel.Meter)
			if err != nil {
				return s.finish(err)
			}
			return s.finish(t.Run(s.ctx, func(e *tcp.Event) {
				metrics.Record(s.ctx, e)
				if !opts.match(e.PID, e.Comm) {
					return
				}
				s.tel.Emit(e.Span())
				s.out.Write(e, func() string { return tcpRow(e) })
			}))
		},
	}
}

func tcpRow(e *tcp.Event) string {
	result := "ok"
	if e.Failed {
		result = "failed " + e.Error
	} else if e.Error != "" {
		result = "ok, closed with " + e.Error
	}
	return fmt.Sprintf("%-12s %7d %-16s %-7s %-22s %-22s %10d %10d %12s %s",
		shortTime(e.End), e.PID, e.Comm, e.Direction, e.Local, e.Peer, e.BytesSent, e.BytesReceived, e.Duration.Round(1000), result)
}

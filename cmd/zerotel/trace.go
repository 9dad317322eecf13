package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/zerotel/zerotel/internal/output"
	"github.com/zerotel/zerotel/internal/telemetry"
)

// exportOptions say where and how long a command reports.
type exportOptions struct {
	output   string
	duration time.Duration
	tel      telemetry.Config
}

func (o *exportOptions) addFlags(f *pflag.FlagSet) {
	f.StringVarP(&o.output, "output", "o", output.Table, "output format: table, json (one object per line) or none (export only)")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (default: until SIGINT/SIGTERM)")
	f.StringVar(&o.tel.MetricsAddr, "metrics-addr", "", "serve Prometheus /metrics here, e.g. :9464 (localhost) or 0.0.0.0:9464")
	f.StringVar(&o.tel.OTLPEndpoint, "otlp-endpoint", "", "send spans and metrics over OTLP here (default $OTEL_EXPORTER_OTLP_ENDPOINT; off when unset)")
	f.StringVar(&o.tel.OTLPProtocol, "otlp-protocol", "", "grpc or http/protobuf (default $OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)")
	f.StringVar(&o.tel.ServiceName, "service-name", "", "service.name of exported telemetry (default $OTEL_SERVICE_NAME, else zerotel)")
}

// traceOptions are the flags every `zerotel trace` command shares.
type traceOptions struct {
	exportOptions
	comm string
	pid  uint32
}

func traceCommand() *cobra.Command {
	opts := &traceOptions{}
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Trace host-wide kernel events (process starts, TCP connections)",
	}
	f := cmd.PersistentFlags()
	opts.addFlags(f)
	f.StringVar(&opts.comm, "comm", "", "only events of processes with this command name")
	f.Uint32Var(&opts.pid, "pid", 0, "only events of this process id")
	cmd.AddCommand(traceExecCommand(opts), traceTCPCommand(opts))
	return cmd
}

// session is what a trace command runs inside: a context that ends on
// SIGINT, SIGTERM or --duration, the telemetry pipeline and the writer.
type session struct {
	ctx    context.Context
	tel    *telemetry.Telemetry
	out    *output.Writer
	cancel func()
}

func (o *exportOptions) start(header string) (*session, error) {
	out, err := output.New(os.Stdout, o.output, header)
	if err != nil {
		return nil, &exitError{code: 2, err: err}
	}
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	cancel := stop
	if o.duration > 0 {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, o.duration)
		cancel = func() { c(); stop() }
	}
	tel, err := telemetry.Start(ctx, o.tel)
	if err != nil {
		cancel()
		return nil, err
	}
	if a := tel.MetricsAddr(); a != nil {
		slog.Info("serving Prometheus metrics", "url", fmt.Sprintf("http://%s/metrics", a))
	}
	go out.FlushEvery(ctx, 200*time.Millisecond)
	return &session{ctx: ctx, tel: tel, out: out, cancel: cancel}, nil
}

// finish stops telemetry, flushing queued spans for at most 5 seconds.
func (s *session) finish(runErr error) error {
	s.cancel()
	s.out.Flush()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.tel.Shutdown(ctx); err != nil {
		slog.Warn("telemetry shutdown", "error", err)
	}
	if d := s.tel.SpansDropped(); d > 0 {
		slog.Warn("spans dropped: the OTLP endpoint did not take them", "dropped", d, "exported", s.tel.SpansExported())
	}
	return runErr
}

// match applies --pid and --comm.
func (o *traceOptions) match(pid uint32, comm string) bool {
	return (o.pid == 0 || o.pid == pid) && (o.comm == "" || o.comm == comm)
}

func shortTime(t time.Time) string { return t.Format("15:04:05.000") }

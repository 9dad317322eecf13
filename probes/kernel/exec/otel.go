package exec

import (
	"context"
	"path/filepath"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/zerotel/zerotel/internal/telemetry"
)

// Span maps an exec to a span "exec {name}" covering the execve call, with
// OTel process attributes; a failed exec has status Error. Exits are not
// spans: their exit code and lifetime are in the console, JSON and metrics.
func (e *Event) Span() telemetry.Span {
	name := filepath.Base(e.Path)
	s := telemetry.Span{
		Name:  "exec " + name,
		Kind:  trace.SpanKindInternal,
		Start: e.Start,
		End:   e.End,
		Attributes: []attribute.KeyValue{
			semconv.ProcessPID(int(e.PID)),
			semconv.ProcessParentPID(int(e.PPID)),
			semconv.ProcessRealUserID(int(e.UID)),
			semconv.ProcessExecutableName(e.Comm),
			semconv.ProcessExecutablePath(e.Path),
			semconv.ProcessCommandArgs(e.Args...),
			attribute.Bool("zerotel.process.args_truncated", e.ArgsTruncated),
		},
	}
	if e.Failed() {
		s.Error = e.Error
		s.Attributes = append(s.Attributes, semconv.ErrorTypeKey.String(e.Error))
	}
	return s
}

// Metrics counts execs and exits.
type Metrics struct {
	execs metric.Int64Counter
	exits metric.Int64Counter
}

// NewMetrics creates the exec instruments on m.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	execs, err := m.Int64Counter("zerotel.process.execs",
		metric.WithDescription("Process execs seen, failed ones with error.type."), metric.WithUnit("{exec}"))
	if err != nil {
		return nil, err
	}
	exits, err := m.Int64Counter("zerotel.process.exits",
		metric.WithDescription("Exits of processes whose exec was seen."), metric.WithUnit("{process}"))
	if err != nil {
		return nil, err
	}
	return &Metrics{execs: execs, exits: exits}, nil
}

// Record counts one event.
func (m *Metrics) Record(ctx context.Context, e *Event) {
	switch {
	case e.Kind == KindExit:
		m.exits.Add(ctx, 1)
	case e.Failed():
		m.execs.Add(ctx, 1, metric.WithAttributes(semconv.ErrorTypeKey.String(e.Error)))
	default:
		m.execs.Add(ctx, 1)
	}
}

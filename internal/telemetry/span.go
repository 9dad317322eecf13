package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Span is a finished operation a probe saw, with its real start and end.
type Span struct {
	Name       string
	Kind       trace.SpanKind
	Start, End time.Time
	Attributes []attribute.KeyValue
	Error      string // non-empty: status Error with this description

	// Ids chosen by the probe; zero: the SDK picks them and the span is a root.
	TraceID      trace.TraceID
	SpanID       trace.SpanID
	Parent       trace.SpanID // zero: a root span
	ParentRemote bool         // the parent came from another process (traceparent)
}

// TracesEnabled reports whether spans are exported: when not, callers can
// skip building them.
func (t *Telemetry) TracesEnabled() bool { return t.queue != nil }

// Emit queues a span for export without ever blocking the caller; when the
// queue is full the span is dropped and counted.
func (t *Telemetry) Emit(s Span) {
	if t.queue == nil {
		return
	}
	select {
	case t.queue <- s:
	default:
		t.overflow.Add(1)
	}
}

func (t *Telemetry) drain() {
	defer close(t.done)
	for s := range t.queue {
		_, span := t.tracer.Start(s.context(), s.Name,
			trace.WithSpanKind(s.Kind),
			trace.WithTimestamp(s.Start),
			trace.WithAttributes(s.Attributes...),
		)
		if s.Error != "" {
			span.SetStatus(codes.Error, s.Error)
		}
		span.End(trace.WithTimestamp(s.End))
	}
}

// context carries the probe's ids and parent to the SDK.
func (s *Span) context() context.Context {
	ctx := context.Background()
	if !s.TraceID.IsValid() || !s.SpanID.IsValid() {
		return ctx
	}
	ctx = withIDs(ctx, s.TraceID, s.SpanID)
	if s.Parent.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: s.TraceID, SpanID: s.Parent, TraceFlags: trace.FlagsSampled, Remote: s.ParentRemote,
		}))
	}
	return ctx
}

package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/zerotel/zerotel/internal/bpfprobe"
)

// registerHealth exports the agent's own health: events read and lost per
// probe family, spans exported and dropped.
func (t *Telemetry) registerHealth() error {
	read, err := t.Meter.Int64ObservableCounter("zerotel.probe.events.read",
		metric.WithDescription("Events read from a probe family's ring buffer."), metric.WithUnit("{event}"))
	if err != nil {
		return err
	}
	lost, err := t.Meter.Int64ObservableCounter("zerotel.probe.events.lost",
		metric.WithDescription("Events a probe family dropped in the kernel because its ring buffer was full."), metric.WithUnit("{event}"))
	if err != nil {
		return err
	}
	exported, err := t.Meter.Int64ObservableCounter("zerotel.spans.exported",
		metric.WithDescription("Spans the OTLP exporter delivered."), metric.WithUnit("{span}"))
	if err != nil {
		return err
	}
	dropped, err := t.Meter.Int64ObservableCounter("zerotel.spans.dropped",
		metric.WithDescription("Spans lost before delivery: export queue full or export failed."), metric.WithUnit("{span}"))
	if err != nil {
		return err
	}
	_, err = t.Meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, f := range bpfprobe.Families() {
			probe := metric.WithAttributes(attribute.String("probe", f.Name))
			o.ObserveInt64(read, int64(f.Read()), probe)
			o.ObserveInt64(lost, int64(f.Lost()), probe)
		}
		o.ObserveInt64(exported, int64(t.exported.Load()))
		o.ObserveInt64(dropped, int64(t.overflow.Load()), metric.WithAttributes(attribute.String("reason", "queue_full")))
		o.ObserveInt64(dropped, int64(t.failed.Load()), metric.WithAttributes(attribute.String("reason", "export_failed")))
		return nil
	}, read, lost, exported, dropped)
	return err
}

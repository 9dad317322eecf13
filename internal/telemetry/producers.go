package telemetry

import (
	"context"
	"sync"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// producers gathers metrics that probes aggregate themselves (in the
// kernel) rather than record through the SDK's instruments; every metric
// reader, OTLP and Prometheus, pulls from it.
type producers struct {
	mu   sync.Mutex
	list []sdkmetric.Producer
}

func (p *producers) Produce(ctx context.Context) ([]metricdata.ScopeMetrics, error) {
	p.mu.Lock()
	list := append([]sdkmetric.Producer(nil), p.list...)
	p.mu.Unlock()
	var out []metricdata.ScopeMetrics
	for _, pr := range list {
		sm, err := pr.Produce(ctx)
		if err != nil {
			return out, err
		}
		out = append(out, sm...)
	}
	return out, nil
}

// AddProducer makes p's metrics part of every export.
func (t *Telemetry) AddProducer(p sdkmetric.Producer) {
	t.producers.mu.Lock()
	defer t.producers.mu.Unlock()
	t.producers.list = append(t.producers.list, p)
}

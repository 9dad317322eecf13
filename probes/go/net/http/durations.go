package http

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/zerotel/zerotel/internal/bpfprobe"
)

// Durations produces the http.server.request.duration histogram from the
// counts the kernel side keeps (map "durations"): every server request is
// counted there, sampled or not, so an unsampled request costs no event.
// It is an OpenTelemetry metric producer: the SDK's readers (OTLP,
// Prometheus) pull from it.
type Durations struct {
	mu      sync.Mutex
	tracers []*Tracer
	start   time.Time
}

// NewDurations returns a producer with no tracers yet.
func NewDurations() *Durations { return &Durations{start: time.Now()} }

// Add makes t's counts part of the histogram.
func (d *Durations) Add(t *Tracer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tracers = append(d.tracers, t)
}

// Produce reads the kernel counts of every tracer, merging the points of
// binaries that share attributes.
func (d *Durations) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	points := map[attribute.Distinct]*metricdata.HistogramDataPoint[float64]{}
	var order []attribute.Distinct
	now := time.Now()
	for _, t := range d.tracers {
		var key httpDurKey
		var perCPU []httpDurVal
		it := t.probes.Coll.Maps[httpMapDurations].Iterate()
		for it.Next(&key, &perCPU) {
			attrs := attribute.NewSet(durationShape(&key).attributes()...)
			p, ok := points[attrs.Equivalent()]
			if !ok {
				p = &metricdata.HistogramDataPoint[float64]{
					Attributes: attrs, StartTime: d.start, Time: now,
					Bounds: durationBuckets, BucketCounts: make([]uint64, len(durationBuckets)+1),
				}
				points[attrs.Equivalent()] = p
				order = append(order, attrs.Equivalent())
			}
			var sumNs uint64
			for _, v := range perCPU {
				p.Count += v.Count
				sumNs += v.SumNs
				for i, n := range v.Buckets {
					p.BucketCounts[i] += n
				}
			}
			p.Sum += float64(sumNs) / 1e9
		}
	}
	if len(points) == 0 {
		return nil, nil
	}
	data := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality}
	for _, k := range order {
		data.DataPoints = append(data.DataPoints, *points[k])
	}
	return []metricdata.ScopeMetrics{{
		Scope: instrumentation.Scope{Name: "github.com/zerotel/zerotel"},
		Metrics: []metricdata.Metrics{{
			Name:        "http.server.request.duration",
			Description: "Duration of HTTP server requests.",
			Unit:        "s",
			Data:        data,
		}},
	}}, nil
}

// durationShape is what the metric's attributes derive from, as the
// kernel keyed it.
func durationShape(k *httpDurKey) shape {
	e := Event{Kind: Server, Pattern: bpfprobe.CString(k.Route[:])}
	s := shape{kind: Server, method: bpfprobe.CString(k.Method[:]), status: int(k.Status), route: e.Route(), scheme: "http"}
	if k.Tls != 0 {
		s.scheme = "https"
	}
	if k.ProtoMajor != 0 {
		s.proto = protoVersion(k.ProtoMajor, k.ProtoMinor)
	}
	return s
}

// Package telemetry exports what the probes see: spans over OTLP and metrics
// over OTLP and Prometheus, configured by the standard OTEL_* environment
// variables (flags override them). Exporting never slows tracing down: spans
// go through a bounded queue, and what cannot be exported is counted.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Config says where telemetry goes. Empty fields fall back to OTEL_* variables.
type Config struct {
	ServiceName  string // OTEL_SERVICE_NAME; default "zerotel"
	OTLPEndpoint string // OTEL_EXPORTER_OTLP_ENDPOINT; OTLP is off when neither is set
	OTLPProtocol string // OTEL_EXPORTER_OTLP_PROTOCOL: grpc or http/protobuf (default)
	MetricsAddr  string // Prometheus /metrics listen address; "" = off, ":9464" = localhost
	QueueSize    int    // spans waiting for the exporter; default 8192
}

// Telemetry is the running export pipeline.
type Telemetry struct {
	Meter metric.Meter

	tp        *sdktrace.TracerProvider
	tracer    trace.Tracer
	queue     chan Span
	done      chan struct{}
	mp        *sdkmetric.MeterProvider
	producers producers
	srv       *http.Server
	addr      net.Addr
	exported  atomic.Uint64
	failed    atomic.Uint64 // spans whose export failed
	overflow  atomic.Uint64 // spans dropped because the queue was full
}

// Start builds the pipeline. OTLP export starts only when an endpoint is
// configured; Prometheus only when an address is given.
func Start(ctx context.Context, cfg Config) (*Telemetry, error) {
	applyEnv(cfg)
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	t := &Telemetry{done: make(chan struct{})}
	if err := t.startMetrics(ctx, cfg, res); err != nil {
		return nil, err
	}
	if err := t.startTraces(ctx, cfg, res); err != nil {
		t.Shutdown(ctx)
		return nil, err
	}
	return t, nil
}

// applyEnv turns flags into the standard variables, which the exporters read.
func applyEnv(cfg Config) {
	if cfg.ServiceName != "" {
		os.Setenv("OTEL_SERVICE_NAME", cfg.ServiceName)
	} else if os.Getenv("OTEL_SERVICE_NAME") == "" && !strings.Contains(os.Getenv("OTEL_RESOURCE_ATTRIBUTES"), "service.name=") {
		os.Setenv("OTEL_SERVICE_NAME", "zerotel")
	}
	if cfg.OTLPEndpoint != "" {
		ep := cfg.OTLPEndpoint
		if !strings.Contains(ep, "://") {
			ep = "http://" + ep
		}
		os.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", ep)
	}
	if cfg.OTLPProtocol != "" {
		os.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", cfg.OTLPProtocol)
	}
}

// OTLPEnabled reports whether an OTLP endpoint is configured.
func OTLPEnabled() bool {
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if os.Getenv(v) != "" {
			return os.Getenv("OTEL_TRACES_EXPORTER") != "none"
		}
	}
	return false
}

func (t *Telemetry) startTraces(ctx context.Context, cfg Config, res *resource.Resource) error {
	if !OTLPEnabled() {
		close(t.done)
		return nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return fmt.Errorf("OTLP trace exporter: %w", err)
	}
	t.tp = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		// Probes sample in the kernel; what reaches the SDK is kept.
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithIDGenerator(idGenerator{}),
		// Blocking: a full SDK queue holds up our queue worker, not the
		// probes; our own bounded queue is where spans are dropped and counted.
		sdktrace.WithSpanProcessor(sdktrace.NewBatchSpanProcessor(&countingExporter{exp, t}, sdktrace.WithBlocking())),
	)
	t.tracer = t.tp.Tracer("github.com/zerotel/zerotel")
	size := cfg.QueueSize
	if size <= 0 {
		size = 8192
	}
	t.queue = make(chan Span, size)
	go t.drain()
	return nil
}

func (t *Telemetry) startMetrics(ctx context.Context, cfg Config, res *resource.Resource) error {
	opts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if cfg.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithProducer(&t.producers))
		if err != nil {
			return fmt.Errorf("prometheus exporter: %w", err)
		}
		opts = append(opts, sdkmetric.WithReader(exp))
		if err := t.serveMetrics(cfg.MetricsAddr, reg); err != nil {
			return err
		}
	}
	if OTLPEnabled() && os.Getenv("OTEL_METRICS_EXPORTER") != "none" {
		autoexport.WithFallbackMetricProducer(func(context.Context) (sdkmetric.Producer, error) { return &t.producers, nil })
		r, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return fmt.Errorf("OTLP metric exporter: %w", err)
		}
		opts = append(opts, sdkmetric.WithReader(r))
	}
	t.mp = sdkmetric.NewMeterProvider(opts...)
	t.Meter = t.mp.Meter("github.com/zerotel/zerotel")
	return t.registerHealth()
}

// serveMetrics listens for Prometheus scrapes. An address without a host
// binds to localhost: exposing metrics beyond the host is a choice to make.
func (t *Telemetry) serveMetrics(addr string, reg *prometheus.Registry) error {
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	t.addr = ln.Addr()
	go t.srv.Serve(ln)
	return nil
}

// MetricsAddr is where /metrics is served, or nil.
func (t *Telemetry) MetricsAddr() net.Addr { return t.addr }

// Shutdown flushes what is queued (bounded by ctx) and stops everything.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.queue != nil {
		close(t.queue)
		select {
		case <-t.done:
		case <-ctx.Done():
		}
	}
	if t.tp != nil {
		errs = append(errs, t.tp.Shutdown(ctx))
	}
	if t.mp != nil {
		errs = append(errs, t.mp.Shutdown(ctx))
	}
	if t.srv != nil {
		errs = append(errs, t.srv.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// Counters of the span pipeline, for tests and health metrics.
func (t *Telemetry) SpansExported() uint64 { return t.exported.Load() }
func (t *Telemetry) SpansDropped() uint64  { return t.failed.Load() + t.overflow.Load() }

type countingExporter struct {
	sdktrace.SpanExporter
	t *Telemetry
}

func (c *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := c.SpanExporter.ExportSpans(ctx, spans)
	if err != nil {
		c.t.failed.Add(uint64(len(spans)))
	} else {
		c.t.exported.Add(uint64(len(spans)))
	}
	return err
}

package tcp

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/zerotel/zerotel/internal/telemetry"
)

// Span maps a connection to a span with OTel network, server/client and
// process attributes: tcp.connect (CLIENT) for outbound, tcp.accept (SERVER)
// for inbound, status Error for a failed attempt.
func (e *Event) Span() telemetry.Span {
	s := telemetry.Span{Start: e.Start, End: e.End, Attributes: []attribute.KeyValue{
		semconv.NetworkTransportTCP,
		networkType(e),
		semconv.NetworkLocalAddress(e.Local.Addr().String()),
		semconv.NetworkLocalPort(int(e.Local.Port())),
		semconv.NetworkPeerAddress(e.Peer.Addr().String()),
		semconv.NetworkPeerPort(int(e.Peer.Port())),
		semconv.ProcessPID(int(e.PID)),
		semconv.ProcessExecutableName(e.Comm),
		attribute.Int64("zerotel.tcp.bytes_sent", int64(e.BytesSent)),
		attribute.Int64("zerotel.tcp.bytes_received", int64(e.BytesReceived)),
	}}
	if e.Direction == Inbound {
		s.Name, s.Kind = "tcp.accept", trace.SpanKindServer
		s.Attributes = append(s.Attributes,
			semconv.ServerAddress(e.Local.Addr().String()), semconv.ServerPort(int(e.Local.Port())),
			semconv.ClientAddress(e.Peer.Addr().String()), semconv.ClientPort(int(e.Peer.Port())))
	} else {
		s.Name, s.Kind = "tcp.connect", trace.SpanKindClient
		s.Attributes = append(s.Attributes,
			semconv.ServerAddress(e.Peer.Addr().String()), semconv.ServerPort(int(e.Peer.Port())))
	}
	if e.Failed {
		s.Error = e.Error
		s.Attributes = append(s.Attributes, semconv.ErrorTypeKey.String(e.Error))
	}
	return s
}

func networkType(e *Event) attribute.KeyValue {
	if e.Local.Addr().Is4() || e.Local.Addr().Is4In6() {
		return semconv.NetworkTypeIPv4
	}
	return semconv.NetworkTypeIPv6
}

// Metrics counts connections and their durations.
type Metrics struct {
	connections metric.Int64Counter
	duration    metric.Float64Histogram
}

// NewMetrics creates the tcp instruments on m.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	conns, err := m.Int64Counter("zerotel.tcp.connections",
		metric.WithDescription("TCP connections closed, by direction and outcome."), metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	dur, err := m.Float64Histogram("zerotel.tcp.connection.duration",
		metric.WithDescription("TCP connection lifetime, from the first SYN to close."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 3600))
	if err != nil {
		return nil, err
	}
	return &Metrics{connections: conns, duration: dur}, nil
}

// Record counts one connection.
func (m *Metrics) Record(ctx context.Context, e *Event) {
	attrs := []attribute.KeyValue{attribute.String("zerotel.tcp.direction", string(e.Direction)), networkType(e)}
	if e.Failed {
		attrs = append(attrs, semconv.ErrorTypeKey.String(e.Error))
	}
	set := metric.WithAttributes(attrs...)
	m.connections.Add(ctx, 1, set)
	if !e.Failed {
		m.duration.Record(ctx, e.Duration.Seconds(), set)
	}
}

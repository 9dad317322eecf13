package http

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/zerotel/zerotel/internal/telemetry"
)

// Route is the ServeMux pattern without its method and host: the
// semantic conventions' http.route ("GET /users/{id}" -> "/users/{id}").
func (e *Event) Route() string {
	p := e.Pattern
	if i := strings.IndexAny(p, " \t"); i >= 0 {
		p = strings.TrimLeft(p[i:], " \t")
	}
	if i := strings.IndexByte(p, '/'); i > 0 {
		p = p[i:] // drop a host
	}
	return p
}

// knownMethods are the methods the semantic conventions name; others are
// reported as _OTHER so a scanner cannot blow up metric cardinality.
var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true,
	"CONNECT": true, "OPTIONS": true, "TRACE": true, "PATCH": true}

func (e *Event) method() []attribute.KeyValue {
	if knownMethods[e.Method] {
		return []attribute.KeyValue{semconv.HTTPRequestMethodKey.String(e.Method)}
	}
	return []attribute.KeyValue{semconv.HTTPRequestMethodKey.String("_OTHER"), semconv.HTTPRequestMethodOriginal(e.Method)}
}

func (e *Event) name() string {
	m := e.Method
	if !knownMethods[m] {
		m = "HTTP"
	}
	if r := e.Route(); e.Kind == Server && r != "" {
		return m + " " + r
	}
	return m
}

// failed follows the conventions: 5xx fails a server span, 4xx and 5xx a
// client's, and so does a client call that got no response.
func (e *Event) failed() bool {
	if e.Kind == Server {
		return e.Status >= 500
	}
	return e.Status >= 400 || e.NoResponse
}

// errorType is error.type for a failed request: the status code, or
// _OTHER (the conventions' fallback) when there was no response: the Go
// error's kind is not visible to the probe.
func (e *Event) errorType() string {
	if e.NoResponse {
		return "_OTHER"
	}
	return strconv.Itoa(e.Status)
}

// statusAttr is http.response.status_code, absent without a response.
func (e *Event) statusAttr() []attribute.KeyValue {
	if e.NoResponse {
		return nil
	}
	return []attribute.KeyValue{semconv.HTTPResponseStatusCode(e.Status)}
}

// hostPort splits "host[:port]", defaulting the port by scheme.
func hostPort(hostport, scheme string) (string, int) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.Trim(hostport, "[]")
		if scheme == "https" {
			return host, 443
		}
		return host, 80
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

// Span maps the request to an OpenTelemetry span after the stable HTTP
// semantic conventions, with the ids the kernel chose.
func (e *Event) Span() telemetry.Span {
	s := telemetry.Span{
		Name: e.name(), Start: e.Start, End: e.End,
		TraceID: e.TraceID, SpanID: e.SpanID, Parent: e.Parent, ParentRemote: e.ParentRemote,
	}
	attrs := append(e.method(), e.statusAttr()...)
	host, port := hostPort(e.Host, e.Scheme)
	if e.Kind == Server {
		s.Kind = trace.SpanKindServer
		attrs = append(attrs, semconv.URLPath(e.Path), semconv.URLScheme(e.Scheme),
			semconv.ServerAddress(host), semconv.ServerPort(port))
		if e.Query != "" {
			attrs = append(attrs, semconv.URLQuery(e.Query))
		}
		if r := e.Route(); r != "" {
			attrs = append(attrs, semconv.HTTPRoute(r))
		}
		if ip, p, err := net.SplitHostPort(e.Peer); err == nil {
			pn, _ := strconv.Atoi(p)
			attrs = append(attrs, semconv.ClientAddress(ip), semconv.ClientPort(pn))
		}
		if e.Proto != "" {
			attrs = append(attrs, semconv.NetworkProtocolVersion(e.Proto))
		}
		if e.UserAgent != "" {
			attrs = append(attrs, semconv.UserAgentOriginal(e.UserAgent))
		}
	} else {
		s.Kind = trace.SpanKindClient
		full := e.Scheme + "://" + e.Host + e.Path
		if e.Query != "" {
			full += "?" + e.Query
		}
		attrs = append(attrs, semconv.URLFull(full), semconv.ServerAddress(host), semconv.ServerPort(port))
	}
	attrs = append(attrs, semconv.ProcessPID(int(e.PID)))
	if e.failed() {
		s.Error = e.errorType()
		if e.NoResponse {
			s.Error = "no response"
		}
		attrs = append(attrs, semconv.ErrorTypeKey.String(e.errorType()))
	}
	s.Attributes = attrs
	return s
}

// Metrics records http.client.request.duration from client events. The
// server histogram comes from the kernel's counts (see Durations).
type Metrics struct {
	client metric.Float64Histogram

	// Attribute sets by request shape: building a set sorts and allocates,
	// and a service sees few shapes, so each is built once.
	mu   sync.Mutex
	sets map[shape]metric.MeasurementOption
}

// shape is what a request's metric attributes derive from.
type shape struct {
	kind                        Kind
	method, scheme, route, host string
	proto                       string
	status                      int
	noResponse                  bool
}

// maxShapes bounds the cache: past it (a cardinality problem anyway)
// sets are built per request.
const maxShapes = 10000

// durationBuckets are the semantic conventions' advice for HTTP durations.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// NewMetrics creates the instruments on m.
func NewMetrics(m metric.Meter) (*Metrics, error) {
	cli, err := m.Float64Histogram("http.client.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of HTTP client requests."), metric.WithExplicitBucketBoundaries(durationBuckets...))
	if err != nil {
		return nil, err
	}
	return &Metrics{client: cli, sets: map[shape]metric.MeasurementOption{}}, nil
}

// Record adds one client request, sampled or not.
func (m *Metrics) Record(ctx context.Context, e *Event) {
	if e.Kind != Client {
		return // counted in the kernel
	}
	k := shape{kind: e.Kind, method: e.Method, scheme: e.Scheme, status: e.Status, host: e.Host, noResponse: e.NoResponse}
	m.mu.Lock()
	set, ok := m.sets[k]
	if !ok {
		set = metric.WithAttributeSet(attribute.NewSet(k.attributes()...))
		if len(m.sets) < maxShapes {
			m.sets[k] = set
		}
	}
	m.mu.Unlock()
	m.client.Record(ctx, e.Duration().Seconds(), set)
}

func (k shape) attributes() []attribute.KeyValue {
	e := Event{Kind: k.kind, Method: k.method, Status: k.status, NoResponse: k.noResponse}
	attrs := append(append(e.method(), e.statusAttr()...), semconv.URLScheme(k.scheme))
	if e.failed() {
		attrs = append(attrs, semconv.ErrorTypeKey.String(e.errorType()))
	}
	if k.kind == Server {
		if k.route != "" {
			attrs = append(attrs, semconv.HTTPRoute(k.route))
		}
		if k.proto != "" {
			attrs = append(attrs, semconv.NetworkProtocolName("http"), semconv.NetworkProtocolVersion(k.proto))
		}
	} else {
		host, port := hostPort(k.host, k.scheme)
		attrs = append(attrs, semconv.ServerAddress(host), semconv.ServerPort(port))
	}
	return attrs
}

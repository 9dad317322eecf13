package http

import (
	"fmt"
	"strings"
	"time"
	"unsafe"

	"github.com/zerotel/zerotel/internal/kclock"
	"go.opentelemetry.io/otel/trace"
)

// Kind tells a server span from a client span.
type Kind string

const (
	Server Kind = "server"
	Client Kind = "client"
)

// Event is one HTTP request served or made by a traced process.
type Event struct {
	Kind         Kind          `json:"kind"`
	PID          uint32        `json:"pid"`
	Start        time.Time     `json:"start"`
	End          time.Time     `json:"end"`
	TraceID      trace.TraceID `json:"trace_id"`
	SpanID       trace.SpanID  `json:"span_id"`
	Parent       trace.SpanID  `json:"parent_span_id"`
	ParentRemote bool          `json:"parent_remote,omitempty"` // parent from a traceparent header
	Sampled      bool          `json:"sampled"`
	Method       string        `json:"method"`
	Scheme       string        `json:"scheme,omitempty"`
	Host         string        `json:"host,omitempty"` // server: Host header; client: URL host
	Path         string        `json:"path,omitempty"`
	Query        string        `json:"query,omitempty"`
	Pattern      string        `json:"pattern,omitempty"` // ServeMux pattern, e.g. "GET /users/{id}"
	Peer         string        `json:"peer,omitempty"`    // server: the client's address
	UserAgent    string        `json:"user_agent,omitempty"`
	Proto        string        `json:"proto,omitempty"` // "1.1"
	Status       int           `json:"status"`
	// NoResponse: a client call that failed before any response (refused,
	// timed out, ...); Status is then 0.
	NoResponse bool `json:"no_response,omitempty"`
}

// Duration is how long the request took.
func (e *Event) Duration() time.Duration { return e.End.Sub(e.Start) }

// headerSize is the fixed part of a record; the strings follow.
var headerSize = int(unsafe.Offsetof(httpHttpEvent{}.Data))

// str returns string field f from the record's packed data.
func str(r *httpHttpEvent, f httpHttpStr) string {
	off, n := int(r.StrOff[f]), int(r.StrLen[f])
	if n == 0 || off+n > len(r.Data) {
		return ""
	}
	return string(unsafe.Slice((*byte)(unsafe.Pointer(&r.Data[off])), n))
}

func decode(r *httpHttpEvent) *Event {
	e := &Event{
		Kind:         Server,
		PID:          r.Pid,
		Start:        kclock.Time(r.StartNs),
		End:          kclock.Time(r.EndNs),
		TraceID:      r.TraceId,
		SpanID:       r.SpanId,
		Parent:       r.ParentSpanId,
		ParentRemote: r.ParentRemote != 0,
		Sampled:      r.Sampled != 0,
		Method:       str(r, httpHttpStrSTR_METHOD),
		Scheme:       str(r, httpHttpStrSTR_SCHEME),
		Host:         str(r, httpHttpStrSTR_HOST),
		Path:         str(r, httpHttpStrSTR_PATH),
		Query:        str(r, httpHttpStrSTR_QUERY),
		Pattern:      str(r, httpHttpStrSTR_ROUTE),
		Peer:         str(r, httpHttpStrSTR_PEER),
		Status:       int(r.Status),
	}
	if r.Kind == httpHttpKindHTTP_CLIENT {
		e.Kind = Client
		e.NoResponse = r.NoResponse != 0
		return e
	}
	if e.Scheme = "http"; r.Tls != 0 {
		e.Scheme = "https"
	}
	if r.ProtoMajor != 0 {
		e.Proto = protoVersion(r.ProtoMajor, r.ProtoMinor)
	}
	e.Path, e.Query = splitTarget(e.Path)
	// The kernel copied header lines' rest: a value ends at CR or LF.
	e.Host = headerValue(e.Host)
	e.UserAgent = headerValue(str(r, httpHttpStrSTR_USER_AGENT))
	return e
}

// headerValue cuts a header line's rest at its end.
func headerValue(v string) string {
	if i := strings.IndexAny(v, "\r\n\x00"); i >= 0 {
		return v[:i]
	}
	return v
}

// splitTarget splits a server request's target, as sent in the request
// line, into path and query (as sent: not percent-decoded). An absolute
// target ("http://host/p", sent to proxies) keeps its path only.
func splitTarget(target string) (path, query string) {
	if !strings.HasPrefix(target, "/") {
		if i := strings.Index(target, "://"); i >= 0 {
			rest := target[i+3:]
			if j := strings.IndexAny(rest, "/?"); j >= 0 {
				target = rest[j:]
			} else {
				target = "/"
			}
		}
	}
	path, query, _ = strings.Cut(target, "?")
	if path == "" {
		path = "/"
	}
	return path, query
}

func protoVersion(major, minor uint8) string {
	if major == 1 && minor == 1 {
		return "1.1" // nearly always: no formatting per request
	}
	return fmt.Sprintf("%d.%d", major, minor)
}

package goinspect

// Field names one struct field whose byte offset the BPF programs need.
type Field struct {
	Struct string // full Go type name as in DWARF: "net/http.Request", "runtime.g"
	Name   string // field name as declared: "Method"
}

// Fields is THE list of struct fields zerotel reads from Go programs. The
// generator (offsetgen, run by `go generate ./internal/goinspect/`) puts the
// offset of each of them, for each Go toolchain it can build, into
// offsets.json, which FieldOffset uses for binaries without DWARF. A field
// used by a probe but missing here works only on binaries with DWARF: add it
// here and regenerate.
var Fields = []Field{
	// Goroutine identity and the stack guard the stack-check-jump probes
	// compare rsp with (see probepoint.go).
	{"runtime.g", "stackguard0"},
	{"runtime.g", "goid"},
	{"runtime.g", "parentGoid"},

	{"net/http.Request", "Method"},
	{"net/http.Request", "URL"},
	{"net/http.Request", "Proto"},
	{"net/http.Request", "ProtoMajor"},
	{"net/http.Request", "ProtoMinor"},
	{"net/http.Request", "Header"},
	{"net/http.Request", "ContentLength"},
	{"net/http.Request", "Host"},
	{"net/http.Request", "RemoteAddr"},
	{"net/http.Request", "RequestURI"},
	{"net/http.Request", "TLS"},
	{"net/http.Request", "Pattern"}, // Go 1.23+
	{"net/http.Request", "ctx"},

	{"net/url.URL", "Scheme"},
	{"net/url.URL", "Opaque"},
	{"net/url.URL", "User"},
	{"net/url.URL", "Host"},
	{"net/url.URL", "Path"},
	{"net/url.URL", "RawPath"},
	{"net/url.URL", "RawQuery"},

	{"net/http.Response", "Status"},
	{"net/http.Response", "StatusCode"},
	{"net/http.Response", "ContentLength"},
	{"net/http.Response", "Request"},

	// Server side: the response being written, its connection and the
	// connection's read buffer (whose bytes hold the raw request, including
	// a traceparent line).
	{"net/http.response", "conn"},
	{"net/http.response", "req"},
	{"net/http.response", "status"},
	{"net/http.response", "written"},
	{"net/http.response", "contentLength"},
	{"net/http.response", "handlerDone"},
	{"net/http.conn", "rwc"},
	{"net/http.conn", "remoteAddr"},
	{"net/http.conn", "bufr"},
	{"bufio.Reader", "buf"},
	{"bufio.Reader", "rd"},
	{"bufio.Reader", "r"},
	{"bufio.Reader", "w"},

	// Client side.
	{"net/http.persistConn", "t"},
	{"net/http.persistConn", "conn"},
	{"net/http.persistConn", "br"},
	{"net/http.persistConn", "bw"},
	{"net/http.Transport", "DisableKeepAlives"},
}

package main

import (
	"os"
	"runtime/debug"
)

// The agent allocates for every span it exports (the OpenTelemetry SDK's
// span, its OTLP protobuf), and with Go's default GOGC=100 its heap is
// small, so the collector runs often. Measured here with
// bench/otlp_export.sh (every request of a server under wrk exported over
// OTLP/gRPC to a local Jaeger, 3 alternating runs): 16.2 µs of agent CPU a
// span with GOGC=100 (peak RSS 63 MB), 13.4 µs with these defaults (peak
// RSS 108 MB). Those cycles come from the machine the traced programs run on.
const (
	defaultGCPercent   = 400
	defaultMemoryLimit = 512 << 20 // the collector works harder before this, instead of growing
)

// tuneGC applies the defaults above unless GOGC / GOMEMLIMIT say otherwise.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
}

package telemetry

import (
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
)

// A collector that is down fails every batch; one warning every half minute
// says so without flooding the log. The spans lost are counted either way.
func init() {
	var (
		mu         sync.Mutex
		last       time.Time
		suppressed int
	)
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < 30*time.Second {
			suppressed++
			return
		}
		slog.Warn("telemetry export failed; tracing goes on (spans that cannot be sent are counted in zerotel_spans_dropped_total)",
			"error", err, "similar_errors_suppressed", suppressed)
		last, suppressed = time.Now(), 0
	}))
}

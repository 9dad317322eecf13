package testutil

import (
	"context"
	"testing"
)

// Tracer is what a kernel probe family's tracer offers: run it, close it.
type Tracer[E any] interface {
	Run(ctx context.Context, handle func(*E)) error
	Close() error
}

// Stream runs tr until the test ends and returns a channel of copies of
// its events (events beyond the channel's room are dropped: tests wait for
// specific ones among few).
func Stream[E any](t testing.TB, tr Tracer[E]) <-chan *E {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan *E, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Run(ctx, func(e *E) {
			c := *e
			select {
			case events <- &c:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done; tr.Close() })
	return events
}

// Package output writes events live to a terminal or pipe: an aligned table
// for people, or one JSON object per line for programs.
package output

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Formats accepted by New.
const (
	Table = "table"
	JSON  = "json"
	None  = "none" // nothing on stdout: export only (OTLP, Prometheus)
)

// Writer writes events in one format. Safe for concurrent use.
type Writer struct {
	mu     sync.Mutex
	bw     *bufio.Writer
	enc    *json.Encoder // nil for the table
	header string
	none   bool
}

// New returns a writer for format; header is the table's first line.
func New(w io.Writer, format, header string) (*Writer, error) {
	bw := bufio.NewWriter(w)
	switch format {
	case Table, "":
		return &Writer{bw: bw, header: header}, nil
	case JSON:
		return &Writer{bw: bw, enc: json.NewEncoder(bw)}, nil
	case None:
		return &Writer{bw: bw, none: true}, nil
	}
	return nil, fmt.Errorf("unknown output format %q: use %q, %q or %q", format, Table, JSON, None)
}

// Write writes v as JSON, or the line row() returns as a table row.
func (w *Writer) Write(v any, row func() string) {
	if w.none {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.enc != nil {
		_ = w.enc.Encode(v)
		return
	}
	if w.header != "" {
		w.bw.WriteString(w.header + "\n")
		w.header = ""
	}
	w.bw.WriteString(row() + "\n")
}

// Flush writes out what is buffered.
func (w *Writer) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bw.Flush()
}

// FlushEvery flushes every d until ctx is done, then once more: output
// stays live without a write syscall per event under load.
func (w *Writer) FlushEvery(ctx context.Context, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			w.Flush()
		case <-ctx.Done():
			w.Flush()
			return
		}
	}
}

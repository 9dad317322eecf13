// Command tcpload is a loopback TCP load generator for benchmarking the tcp
// probe. It listens on 127.0.0.1 (an ephemeral port), then opens -n short
// connections to itself, -c at a time: each connects, writes 64 bytes, reads
// the 64-byte echo and closes. It never talks to anything but its own
// loopback listener, and stops after -n connections or -timeout, whichever
// comes first. It prints one JSON summary line on stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

const msgSize = 64

type summary struct {
	Connections int64   `json:"connections"` // completed exchanges
	Failed      int64   `json:"failed"`      // connect, write, read or echo mismatch errors
	Seconds     float64 `json:"seconds"`
	ConnsPerSec float64 `json:"conns_per_sec"`
	ListenPort  int     `json:"listen_port"`
	PID         int     `json:"pid"`
	Concurrency int     `json:"concurrency"`
	TimedOut    bool    `json:"timed_out"`
	FirstError  string  `json:"first_error,omitempty"`
}

func main() {
	n := flag.Int("n", 20000, "number of connections")
	c := flag.Int("c", 8, "concurrent connections")
	timeout := flag.Duration("timeout", 5*time.Minute, "stop after this long even if not all connections are made")
	flag.Parse()
	if *n < 0 || *c < 1 {
		fmt.Fprintln(os.Stderr, "tcpload: -n must be >= 0 and -c >= 1")
		os.Exit(2)
	}
	s, err := run(*n, *c, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpload:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(s)
}

func run(n, c int, timeout time.Duration) (*summary, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	addr := ln.Addr().String()
	go serve(ln)

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	var (
		next, ok, failed atomic.Int64
		firstErr         error
		errOnce          sync.Once
		wg               sync.WaitGroup
	)
	dialer := net.Dialer{Timeout: 10 * time.Second}
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]byte, msgSize)
			in := make([]byte, msgSize)
			for i := range out {
				out[i] = byte('a' + i%26)
			}
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				if err := exchange(ctx, &dialer, addr, out, in); err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	s := &summary{
		Connections: ok.Load(),
		Failed:      failed.Load(),
		Seconds:     secs,
		ConnsPerSec: float64(ok.Load()) / secs,
		ListenPort:  ln.Addr().(*net.TCPAddr).Port,
		PID:         os.Getpid(),
		Concurrency: c,
		TimedOut:    errors.Is(ctx.Err(), context.DeadlineExceeded),
	}
	if firstErr != nil {
		s.FirstError = firstErr.Error()
	}
	return s, nil
}

// exchange makes one connection: write 64 bytes, read the echo, close.
func exchange(ctx context.Context, d *net.Dialer, addr string, out, in []byte) error {
	conn, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write(out); err != nil {
		return err
	}
	if _, err := io.ReadFull(conn, in); err != nil {
		return err
	}
	if string(in) != string(out) {
		return errors.New("echo mismatch")
	}
	return nil
}

// serve echoes 64 bytes on each accepted connection, then waits for the
// client to close first (so TIME_WAIT stays on the client side) and closes.
func serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, msgSize)
			if _, err := io.ReadFull(conn, buf); err != nil {
				return
			}
			if _, err := conn.Write(buf); err != nil {
				return
			}
			io.Copy(io.Discard, conn) // until the client's FIN
		}()
	}
}

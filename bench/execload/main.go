// Command execload is a process-spawn load generator for benchmarking the
// exec probe. It runs -n times `/bin/true MARKER`, -c at a time, waiting for
// each, and stops after -n processes or -timeout, whichever comes first. The
// marker argument lets a benchmark pick exactly these execs out of a
// host-wide trace. It prints one JSON summary line on stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"
)

type summary struct {
	Execs       int64   `json:"execs"`  // processes that ran and exited 0
	Failed      int64   `json:"failed"` // spawn errors or non-zero exits
	Seconds     float64 `json:"seconds"`
	ExecsPerSec float64 `json:"execs_per_sec"`
	Path        string  `json:"path"`
	Marker      string  `json:"marker"`
	PID         int     `json:"pid"`
	Concurrency int     `json:"concurrency"`
	TimedOut    bool    `json:"timed_out"`
	FirstError  string  `json:"first_error,omitempty"`
}

func main() {
	n := flag.Int("n", 5000, "number of processes to spawn")
	c := flag.Int("c", 2, "processes running at once")
	path := flag.String("path", "/bin/true", "program to run")
	marker := flag.String("marker", "", "argument passed to every process (default zt-bench-<pid>-<time>)")
	timeout := flag.Duration("timeout", 5*time.Minute, "stop after this long even if not all processes ran")
	flag.Parse()
	if *n < 0 || *c < 1 {
		fmt.Fprintln(os.Stderr, "execload: -n must be >= 0 and -c >= 1")
		os.Exit(2)
	}
	if *marker == "" {
		*marker = fmt.Sprintf("zt-bench-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	if _, err := os.Stat(*path); err != nil {
		fmt.Fprintln(os.Stderr, "execload:", err)
		os.Exit(1)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var (
		next, ok, failed atomic.Int64
		firstErr         error
		errOnce          sync.Once
		wg               sync.WaitGroup
	)
	start := time.Now()
	for range *c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*n) && ctx.Err() == nil {
				// Not CommandContext: a process is short; the timeout only
				// stops new spawns.
				if err := exec.Command(*path, *marker).Run(); err != nil {
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
	s := summary{
		Execs:       ok.Load(),
		Failed:      failed.Load(),
		Seconds:     secs,
		ExecsPerSec: float64(ok.Load()) / secs,
		Path:        *path,
		Marker:      *marker,
		PID:         os.Getpid(),
		Concurrency: *c,
		TimedOut:    errors.Is(ctx.Err(), context.DeadlineExceeded),
	}
	if firstErr != nil {
		s.FirstError = firstErr.Error()
	}
	json.NewEncoder(os.Stdout).Encode(s)
}

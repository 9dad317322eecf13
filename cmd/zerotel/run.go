package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/zerotel/zerotel/internal/goinspect"
	"github.com/zerotel/zerotel/internal/goprobe"
	gohttp "github.com/zerotel/zerotel/probes/go/net/http"
)

type runOptions struct {
	exportOptions
	exes        []string
	pids        []int
	sampleRatio float64
}

func runCommand() *cobra.Command {
	opts := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run (--exe PATH | --pid N)... | run [flags] -- COMMAND [ARGS...]",
		Short: "Trace HTTP requests served and made by unmodified Go programs",
		Long: `run attaches to Go programs and turns each HTTP request they serve or make
into an OpenTelemetry span, linked by trace context, with request-duration metrics.

  --exe PATH   every running and every future process of that executable
  --pid N      that process
  -- CMD ARGS  start CMD with the probes already attached, so its first request
               is traced; zerotel exits with its exit code. Its stdout and stderr
               go to zerotel's stderr: zerotel's stdout carries only spans.`,
		Example: `  zerotel run --exe /usr/local/bin/api
  zerotel run --pid 4242 --output json
  OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 zerotel run -- ./api --port 8080`,
		RunE: opts.run,
	}
	f := cmd.Flags()
	opts.addFlags(f)
	f.StringArrayVar(&opts.exes, "exe", nil, "trace every process of this executable (repeatable)")
	f.IntSliceVar(&opts.pids, "pid", nil, "trace this process (repeatable)")
	f.Float64Var(&opts.sampleRatio, "sample-ratio", -1, "keep this ratio of new traces (overrides OTEL_TRACES_SAMPLER_ARG; incoming sampled flags still win unless OTEL_TRACES_SAMPLER says otherwise)")
	return cmd
}

func (o *runOptions) run(cmd *cobra.Command, args []string) error {
	var command []string
	if dash := cmd.ArgsLenAtDash(); dash >= 0 {
		command = args[dash:]
		args = args[:dash]
	}
	if len(args) > 0 {
		return &exitError{code: 2, err: fmt.Errorf("unexpected arguments %q: put the command to start after -- (see zerotel run --help)", args)}
	}
	if len(o.exes) == 0 && len(o.pids) == 0 && len(command) == 0 {
		return &exitError{code: 2, err: errors.New("nothing to trace: give --exe PATH, --pid N or -- COMMAND (see zerotel run --help)")}
	}
	for _, exe := range o.exes {
		if _, err := os.Stat(exe); err != nil {
			return &exitError{code: 2, err: fmt.Errorf("--exe %s: %w", exe, err)}
		}
	}
	for _, pid := range o.pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return &exitError{code: 2, err: fmt.Errorf("--pid %d: no such process", pid)}
		}
	}
	if len(command) > 0 {
		if _, err := exec.LookPath(command[0]); err != nil {
			return &exitError{code: 2, err: fmt.Errorf("cannot run %q: %w", command[0], err)}
		}
	}
	if err := checkPrivileges(); err != nil {
		return err
	}
	sampling, err := samplingFromEnv(o.sampleRatio)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	s, err := o.start(fmt.Sprintf("%-12s %-6s %7s %10s %6s %-7s %-40s %s", "TIME", "KIND", "PID", "DURATION", "STATUS", "METHOD", "TARGET", "TRACE / SPAN <- PARENT"))
	if err != nil {
		return err
	}
	metrics, err := gohttp.NewMetrics(s.tel.Meter)
	if err != nil {
		return s.finish(err)
	}
	var child *heldCommand
	if len(command) > 0 {
		if child, err = startHeld(command); err != nil {
			return s.finish(&exitError{code: 2, err: err})
		}
	}

	var tracers []*gohttp.Tracer
	durations := gohttp.NewDurations()
	s.tel.AddProducer(durations)
	attach := func(path string, pid int) {
		if t := attachHTTP(path, pid, sampling); t != nil {
			tracers = append(tracers, t)
			durations.Add(t)
		}
	}
	for _, exe := range o.exes {
		attach(exe, 0)
	}
	for _, pid := range o.pids {
		attach(fmt.Sprintf("/proc/%d/exe", pid), pid)
	}
	if child != nil {
		attach(child.path, child.cmd.Process.Pid)
	}
	defer func() {
		for _, t := range tracers {
			t.Close()
		}
	}()
	if len(tracers) == 0 && child == nil {
		slog.Warn("nothing to trace: no target runs Go code that zerotel can probe")
		return s.finish(nil)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(tracers))
	for _, t := range tracers {
		wg.Go(func() {
			errs <- t.Run(s.ctx, func(e *gohttp.Event) {
				metrics.Record(s.ctx, e)
				if !e.Sampled {
					return
				}
				if s.tel.TracesEnabled() {
					s.tel.Emit(e.Span())
				}
				s.out.Write(e, func() string { return httpRow(e) })
			})
		})
	}
	slog.Info("tracing", "probe", "net/http", "targets", len(tracers))

	var runErr error
	if child != nil {
		runErr = child.release(s.ctx)
		s.cancel()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		runErr = errors.Join(runErr, err)
	}
	return s.finish(runErr)
}

// attachHTTP attaches the net/http probes to the binary at path, saying
// clearly why not when it cannot. It returns nil when nothing is traced.
func attachHTTP(path string, pid int, sampling gohttp.Sampling) *gohttp.Tracer {
	bin, err := goinspect.Open(path)
	if err != nil {
		if errors.Is(err, goinspect.ErrNotGo) {
			slog.Warn("not a Go binary: zerotel traces Go programs, nothing to trace in it", "binary", path)
		} else {
			slog.Error("cannot inspect binary", "binary", path, "error", err)
		}
		return nil
	}
	t, warnings, err := gohttp.Attach(goprobe.Target{Binary: bin, PID: pid}, sampling)
	for _, w := range warnings {
		if errors.Is(w, goinspect.ErrFuncNotFound) {
			// A server-only program does not link the HTTP client, say.
			slog.Info("probe not attached: the function is not in this binary", "detail", w)
			continue
		}
		slog.Warn("probe disabled", "error", w)
	}
	if err != nil {
		if !bin.HasFunc("net/http.readTransfer") && !bin.HasFunc("net/http.(*Transport).roundTrip") {
			slog.Warn("this Go program does not use net/http: nothing to trace in it", "binary", path, "go", bin.GoVersion)
		} else {
			slog.Error("cannot trace HTTP", "binary", path, "go", bin.GoVersion, "error", err)
		}
		bin.Close()
		return nil
	}
	slog.Info("attached", "binary", path, "go", bin.GoVersion, "stripped", bin.Stripped, "pid", pid)
	return t
}

// heldCommand is a command started but held before it runs its program, so
// probes can be attached first: a shell waits on a pipe, then execs the
// program in the same process.
type heldCommand struct {
	path string
	cmd  *exec.Cmd
	gate *os.File
}

func startHeld(command []string) (*heldCommand, error) {
	path, err := exec.LookPath(command[0])
	if err != nil {
		return nil, fmt.Errorf("cannot run %q: %w", command[0], err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	// fd 3 is the gate: read returns when zerotel closes its end.
	shell := `read -r _ <&3; exec 3<&-; exec "$0" "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", shell, path}, command[1:]...)...)
	cmd.Args[0] = command[0]
	cmd.ExtraFiles = []*os.File{r}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	return &heldCommand{path: path, cmd: cmd, gate: w}, nil
}

// release lets the program run and waits for it; SIGINT/SIGTERM to zerotel
// (ctx done) are passed on. Its exit code becomes zerotel's.
func (h *heldCommand) release(ctx context.Context) error {
	h.gate.Close()
	done := make(chan error, 1)
	go func() { done <- h.cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// zerotel was told to stop (signal or --duration): stop the program
		// too; that is a normal end, not its failure.
		h.cmd.Process.Signal(syscall.SIGTERM)
		<-done
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &exitError{code: ee.ExitCode(), err: fmt.Errorf("%s exited: %w", h.path, err)}
	}
	return err
}

func httpRow(e *gohttp.Event) string {
	target := e.Route()
	if target == "" {
		target = e.Path
	}
	if e.Kind == gohttp.Client {
		target = e.Scheme + "://" + e.Host + e.Path
	}
	parent := "-"
	if e.Parent.IsValid() {
		parent = e.Parent.String()
	}
	return fmt.Sprintf("%-12s %-6s %7d %10s %6d %-7s %-40s %s / %s <- %s",
		shortTime(e.End), e.Kind, e.PID, e.Duration().Round(1000), e.Status, e.Method, target, e.TraceID, e.SpanID, parent)
}

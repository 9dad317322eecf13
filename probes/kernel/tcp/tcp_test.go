package tcp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zerotel/zerotel/internal/testutil"
)

// traceTCP starts the tcp tracer and returns a channel of its events.
func traceTCP(t *testing.T) <-chan *Event {
	t.Helper()
	testutil.RequireRoot(t)
	tr, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan *Event, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.Run(ctx, func(e *Event) {
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

// peer is a running tcppeer process.
type peer struct {
	cmd         *exec.Cmd
	out         *bufio.Reader
	local, peer netip.AddrPort
}

func startPeer(t *testing.T, args ...string) *peer {
	t.Helper()
	cmd := exec.Command(testutil.BuildGo(t, "tcppeer"), args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return &peer{cmd: cmd, out: bufio.NewReader(stdout)}
}

// line reads the next "key=value ..." line the peer prints.
func (p *peer) line(t *testing.T) map[string]string {
	t.Helper()
	s, err := p.out.ReadString('\n')
	if err != nil {
		t.Fatalf("tcppeer output: %v", err)
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	return kv
}

func (p *peer) connected(t *testing.T) {
	kv := p.line(t)
	p.local = netip.MustParseAddrPort(kv["local"])
	p.peer = netip.MustParseAddrPort(kv["peer"])
}

func (p *peer) wait(t *testing.T) {
	t.Helper()
	io.Copy(io.Discard, p.out)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("tcppeer %v: %v", p.cmd.Args[1:], err)
	}
}

func pid(p *peer) uint32 { return uint32(p.cmd.Process.Pid) }

// collect gathers the events whose ports match, until want arrived and one
// more second passed (to catch duplicates), or 10 s.
func collect(t *testing.T, events <-chan *Event, want int, match func(*Event) bool) []*Event {
	t.Helper()
	var got []*Event
	deadline := time.After(10 * time.Second)
	var settle <-chan time.Time
	for {
		select {
		case e := <-events:
			if match(e) {
				got = append(got, e)
				if len(got) == want {
					settle = time.After(time.Second)
				}
			}
		case <-settle:
			return got
		case <-deadline:
			return got
		}
	}
}

func testExchange(t *testing.T, listen string) {
	events := traceTCP(t)
	const n, m = 12345, 54321
	srv := startPeer(t, "server", listen, fmt.Sprint(n), fmt.Sprint(m))
	addr := srv.line(t)["listen"]
	cli := startPeer(t, "client", addr, fmt.Sprint(n), fmt.Sprint(m))
	cli.connected(t)
	srv.connected(t)
	cli.wait(t)
	srv.wait(t)

	got := collect(t, events, 2, func(e *Event) bool {
		return e.Local == cli.local || e.Local == srv.local && e.Peer == srv.peer
	})
	if len(got) != 2 {
		t.Fatalf("want 2 records (one per side), got %d: %+v", len(got), got)
	}
	for _, e := range got {
		want := Event{PID: pid(cli), Comm: "tcppeer", Direction: Outbound, Local: cli.local, Peer: cli.peer, BytesSent: n, BytesReceived: m}
		if e.Local == srv.local {
			want = Event{PID: pid(srv), Comm: "tcppeer", Direction: Inbound, Local: srv.local, Peer: srv.peer, BytesSent: m, BytesReceived: n}
		}
		if e.PID != want.PID || e.Comm != want.Comm || e.Direction != want.Direction || e.Local != want.Local ||
			e.Peer != want.Peer || e.BytesSent != want.BytesSent || e.BytesReceived != want.BytesReceived || e.Failed {
			t.Errorf("got  %+v\nwant %+v", *e, want)
		}
		if e.Duration <= 0 || e.Duration > 10*time.Second || !e.End.After(e.Start) {
			t.Errorf("duration %v start %v end %v", e.Duration, e.Start, e.End)
		}
	}
}

func TestTCPExchangeIPv4(t *testing.T) { testExchange(t, "127.0.0.1:0") }
func TestTCPExchangeIPv6(t *testing.T) { testExchange(t, "[::1]:0") }

func testRefused(t *testing.T, network, host string) {
	events := traceTCP(t)
	// A port nobody listens on: bind one, note it, close it.
	ln, err := net.Listen(network, net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ln.Close()
	cli := startPeer(t, "client", net.JoinHostPort(host, fmt.Sprint(port)), "1", "1")
	if err := cli.cmd.Wait(); err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
	got := collect(t, events, 1, func(e *Event) bool { return e.Peer.Port() == port })
	if len(got) != 1 {
		t.Fatalf("want 1 failure record, got %d", len(got))
	}
	e := got[0]
	if !e.Failed || e.Errno != syscall.ECONNREFUSED || e.Error != "ECONNREFUSED" || e.PID != pid(cli) ||
		e.Direction != Outbound || e.Peer.Addr().String() != host || e.BytesSent != 0 {
		t.Errorf("got %+v, want a failed outbound ECONNREFUSED from pid %d to %s", *e, pid(cli), host)
	}
}

func TestTCPRefusedIPv4(t *testing.T) { testRefused(t, "tcp4", "127.0.0.1") }
func TestTCPRefusedIPv6(t *testing.T) { testRefused(t, "tcp6", "::1") }

package tcp

import (
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
	return testutil.Stream[Event](t, tr)
}

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
	cli, srv := testutil.TCPExchange(t, listen, n, m)

	got := collect(t, events, 2, func(e *Event) bool {
		return e.Local == cli.Local || e.Local == srv.Local && e.Peer == srv.Peer
	})
	if len(got) != 2 {
		t.Fatalf("want 2 records (one per side), got %d: %+v", len(got), got)
	}
	for _, e := range got {
		want := Event{PID: cli.PID, Comm: "tcppeer", Direction: Outbound, Local: cli.Local, Peer: cli.Peer, BytesSent: n, BytesReceived: m}
		if e.Local == srv.Local {
			want = Event{PID: srv.PID, Comm: "tcppeer", Direction: Inbound, Local: srv.Local, Peer: srv.Peer, BytesSent: m, BytesReceived: n}
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

func testRefused(t *testing.T, host string) {
	events := traceTCP(t)
	pid, port := testutil.TCPRefused(t, host)
	got := collect(t, events, 1, func(e *Event) bool { return e.Peer.Port() == port })
	if len(got) != 1 {
		t.Fatalf("want 1 failure record, got %d", len(got))
	}
	e := got[0]
	if !e.Failed || e.Errno != syscall.ECONNREFUSED || e.Error != "ECONNREFUSED" || e.PID != pid ||
		e.Direction != Outbound || e.Peer.Addr().String() != host || e.BytesSent != 0 {
		t.Errorf("got %+v, want a failed outbound ECONNREFUSED from pid %d to %s", *e, pid, host)
	}
}

func TestTCPRefusedIPv4(t *testing.T) { testRefused(t, "127.0.0.1") }
func TestTCPRefusedIPv6(t *testing.T) { testRefused(t, "::1") }

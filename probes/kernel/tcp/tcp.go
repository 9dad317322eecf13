// Package tcp traces TCP connections host-wide from the
// sock:inet_sock_set_state tracepoint: one Event per connection, when it
// closes. See tcp.bpf.c for how the owning process is found.
package tcp

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zerotel/zerotel/internal/bpfprobe"
	"github.com/zerotel/zerotel/internal/kclock"
)

// Where the tcp family attaches. Without the accept tracepoints inbound
// connections are still seen; their owner is then taken at close().
var tracepoints = []bpfprobe.Tracepoint{
	{Group: "sock", Name: "inet_sock_set_state", Program: tcpProgZtTcpState},
	{Group: "syscalls", Name: "sys_exit_accept4", Program: tcpProgZtTcpAccept4, Optional: true},
	{Group: "syscalls", Name: "sys_exit_accept", Program: tcpProgZtTcpAccept, Optional: true},
}

// Direction says which side opened the connection.
type Direction string

const (
	Outbound Direction = "connect" // this host called connect()
	Inbound  Direction = "accept"  // a listener on this host accepted it
)

// Event is one TCP connection, reported when it closed.
type Event struct {
	Start         time.Time      `json:"start"`
	End           time.Time      `json:"end"`
	Duration      time.Duration  `json:"duration_ns"`
	PID           uint32         `json:"pid"` // 0: the owner was never seen in a syscall
	Comm          string         `json:"comm"`
	Direction     Direction      `json:"direction"`
	Local         netip.AddrPort `json:"local"`
	Peer          netip.AddrPort `json:"peer"`
	BytesSent     uint64         `json:"bytes_sent"` // acknowledged by the peer
	BytesReceived uint64         `json:"bytes_received"`
	// Failed is true for a connection attempt that never got established.
	Failed bool `json:"failed"`
	// Errno is the socket error at close (ECONNREFUSED, ETIMEDOUT, ECONNRESET...).
	Errno syscall.Errno `json:"errno,omitempty"`
	Error string        `json:"error,omitempty"`
}

// IPv6 reports whether the connection is over IPv6 (v4-mapped included).
func (e *Event) IPv6() bool { return e.Local.Addr().Is6() }

// Tracer is the loaded tcp probe family.
type Tracer struct {
	family *bpfprobe.Family
}

// Start loads and attaches the tcp probes.
func Start() (*Tracer, error) {
	f, err := bpfprobe.LoadGenerated("tcp", loadTcp, tracepoints)
	if err != nil {
		return nil, err
	}
	return &Tracer{family: f}, nil
}

// Close detaches and unloads everything.
func (t *Tracer) Close() error { return t.family.Close() }

// Run hands each event to handle until ctx is done.
func (t *Tracer) Run(ctx context.Context, handle func(*Event)) error {
	var d Decoder
	return bpfprobe.ReadDecoded(ctx, t.family, tcpMapEvents, d.Decode, handle)
}

// Decoder turns raw ring-buffer records into Events.
type Decoder struct {
	rec tcpTcpEvent
}

// Decode decodes one record.
func (d *Decoder) Decode(raw []byte) (*Event, error) {
	r := &d.rec
	if err := bpfprobe.Decode(raw, r, len(raw)); err != nil {
		return nil, fmt.Errorf("tcp: %w", err)
	}
	ev := &Event{
		Start:         kclock.Time(r.StartNs),
		End:           kclock.Time(r.EndNs),
		Duration:      time.Duration(r.EndNs - r.StartNs),
		PID:           r.Pid,
		Comm:          bpfprobe.CString(r.Comm[:]),
		Local:         addrPort(r.Family, r.LocalAddr, r.LocalPort),
		Peer:          addrPort(r.Family, r.PeerAddr, r.PeerPort),
		BytesSent:     r.BytesSent,
		BytesReceived: r.BytesReceived,
		Failed:        r.Established == 0,
		Direction:     Outbound,
	}
	if r.Direction == tcpTcpDirectionTCP_DIR_ACCEPT {
		ev.Direction = Inbound
	}
	if r.Error != 0 {
		ev.Errno = syscall.Errno(r.Error)
		ev.Error = unix.ErrnoName(ev.Errno)
	} else if ev.Failed {
		ev.Error = "aborted" // closed by its owner before the handshake ended
	}
	return ev, nil
}

func addrPort(family uint16, addr [16]uint8, port uint16) netip.AddrPort {
	if family == unix.AF_INET6 {
		return netip.AddrPortFrom(netip.AddrFrom16(addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(addr[:4])), port)
}

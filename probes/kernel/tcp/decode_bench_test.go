package tcp

import (
	"net/netip"
	"testing"

	"github.com/zerotel/zerotel/internal/testutil"
	"golang.org/x/sys/unix"
)

// rawTCPRecord returns the bytes the kernel puts in the ring buffer for one
// closed connection: the generated tcpTcpEvent, copied out byte for byte.
func rawTCPRecord(tb testing.TB, family uint16, local, peer netip.AddrPort, dir tcpTcpDirection) []byte {
	tb.Helper()
	var r tcpTcpEvent
	r.StartNs = 1_000_000_000
	r.EndNs = r.StartNs + 2_500_000
	r.BytesSent = 78
	r.BytesReceived = 1256
	r.Pid = 4242
	r.Family = family
	r.LocalPort = local.Port()
	r.PeerPort = peer.Port()
	r.Direction = dir
	r.Established = 1
	if family == unix.AF_INET {
		l4, p4 := local.Addr().As4(), peer.Addr().As4()
		copy(r.LocalAddr[:], l4[:])
		copy(r.PeerAddr[:], p4[:])
	} else {
		r.LocalAddr = local.Addr().As16()
		r.PeerAddr = peer.Addr().As16()
	}
	for i, c := range []byte("curl") {
		r.Comm[i] = int8(c)
	}
	return testutil.RecordBytes(&r)
}

func benchDecode(b *testing.B, raw []byte, check func(*testing.B, *Event)) {
	var d Decoder
	testutil.BenchDecode(b, raw, d.Decode, check)
}

func BenchmarkDecodeIPv4Connect(b *testing.B) {
	local := netip.MustParseAddrPort("10.0.0.5:51324")
	peer := netip.MustParseAddrPort("93.184.216.34:443")
	raw := rawTCPRecord(b, unix.AF_INET, local, peer, tcpTcpDirectionTCP_DIR_CONNECT)
	benchDecode(b, raw, func(b *testing.B, e *Event) {
		if e.Local != local || e.Peer != peer || e.Comm != "curl" || e.Direction != Outbound || e.PID != 4242 || e.Failed {
			b.Fatalf("decoded wrongly: %+v", *e)
		}
	})
}

func BenchmarkDecodeIPv6Accept(b *testing.B) {
	local := netip.MustParseAddrPort("[2001:db8::1]:443")
	peer := netip.MustParseAddrPort("[2001:db8::2]:51324")
	raw := rawTCPRecord(b, unix.AF_INET6, local, peer, tcpTcpDirectionTCP_DIR_ACCEPT)
	benchDecode(b, raw, func(b *testing.B, e *Event) {
		if e.Local != local || e.Peer != peer || e.Direction != Inbound {
			b.Fatalf("decoded wrongly: %+v", *e)
		}
	})
}

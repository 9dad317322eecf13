package testutil

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// Peer is one finished side of a testdata/tcppeer exchange.
type Peer struct {
	PID         uint32
	Local, Peer netip.AddrPort
}

// TCPExchange runs a tcppeer server on listen ("127.0.0.1:0", "[::1]:0") and
// a tcppeer client against it: the client sends n bytes, the server m, both
// close. It returns both sides once both processes exited cleanly.
func TCPExchange(t testing.TB, listen string, n, m int) (client, server Peer) {
	t.Helper()
	srv := startPeer(t, "server", listen, n, m)
	addr := srv.line(t)["listen"]
	cli := startPeer(t, "client", addr, n, m)
	client, server = cli.connected(t), srv.connected(t)
	cli.wait(t)
	srv.wait(t)
	return client, server
}

// TCPRefused runs a tcppeer client against a port on host ("127.0.0.1",
// "::1") that nobody listens on, and returns its pid and the port.
func TCPRefused(t testing.TB, host string) (pid uint32, port uint16) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	port = ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ln.Close()
	cli := startPeer(t, "client", net.JoinHostPort(host, fmt.Sprint(port)), 1, 1)
	if err := cli.cmd.Wait(); err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
	return uint32(cli.cmd.Process.Pid), port
}

type peerProc struct {
	cmd *exec.Cmd
	out *bufio.Reader
}

func startPeer(t testing.TB, mode, addr string, n, m int) *peerProc {
	t.Helper()
	cmd := exec.Command(BuildGo(t, "tcppeer"), mode, addr, fmt.Sprint(n), fmt.Sprint(m))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return &peerProc{cmd: cmd, out: bufio.NewReader(stdout)}
}

// line reads the next "key=value ..." line the peer prints.
func (p *peerProc) line(t testing.TB) map[string]string {
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

func (p *peerProc) connected(t testing.TB) Peer {
	kv := p.line(t)
	return Peer{
		PID:   uint32(p.cmd.Process.Pid),
		Local: netip.MustParseAddrPort(kv["local"]),
		Peer:  netip.MustParseAddrPort(kv["peer"]),
	}
}

func (p *peerProc) wait(t testing.TB) {
	t.Helper()
	io.Copy(io.Discard, p.out)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("tcppeer %v: %v", p.cmd.Args[1:], err)
	}
}

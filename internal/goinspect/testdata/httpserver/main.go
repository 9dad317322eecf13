// Command httpserver is the test target of internal/goinspect: a tiny
// net/http server that also makes one client request, so that both the
// server side (serverHandler.ServeHTTP, (*response).finishRequest) and the
// client side ((*Transport).roundTrip, readTransfer) are linked in.
//
// The tests only build and inspect it; they never run it. Run by hand:
//
//	go run ./internal/goinspect/testdata/httpserver -addr 127.0.0.1:8080
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	selfTest := flag.Bool("self-test", false, "send one request to itself and exit")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s (%s)\n", r.PathValue("name"), r.Pattern)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("listening on", ln.Addr())
	if len(os.Args) > 100 { // never: only links the prologue samples below
		fmt.Println(hugeFrame(len(os.Args)), nosplitFrame(1, 2))
	}
	if !*selfTest {
		log.Fatal(http.Serve(ln, mux))
	}
	go http.Serve(ln, mux)

	u := &url.URL{Scheme: "http", Host: ln.Addr().String(), Path: "/hello/zerotel"}
	resp, err := http.Get(u.String())
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	// bufio.Reader is used on purpose: goinspect reads its field offsets.
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil && err != io.EOF {
		log.Fatal(err)
	}
	fmt.Print(resp.Status, " ", line)
	os.Exit(0)
}

// Prologue samples for goinspect's ProbePoint tests, one shape each.

// hugeFrame's frame is larger than StackBig (4096 bytes), so its stack check
// is MOVQ SP, R12; SUBQ $N, R12; JCS; CMPQ R12, 0x10(R14); JBE.
//
//go:noinline
func hugeFrame(n int) byte {
	var buf [16384]byte
	for i := range buf {
		buf[i] = byte(i * n)
	}
	return buf[n%len(buf)]
}

// nosplitFrame has a frame but no stack check: it starts with PUSHQ BP,
// which the kernel emulates.
//
//go:noinline
//go:nosplit
func nosplitFrame(a, b int) int {
	return leafAdd(a, b) + leafAdd(b, a)
}

// leafAdd has neither frame nor stack check: its first instruction is
// arithmetic, which the kernel single-steps.
//
//go:noinline
//go:nosplit
func leafAdd(a, b int) int {
	return a*3 + b
}

// httpserver is the Go HTTP server zerotel's tests trace, built in several
// variants (normal, stripped, -N -l, PIE). It prints "listening on ADDR"
// once it serves.
//
//	GET  /users/{id}  sleeps 20 ms, 200 with a small JSON body
//	POST /items       reads the body, 201 with its length
//	GET  /fail        500
//	GET  /fanout      a goroutine calls -backend /users/7; 200 with its body
//	anything else     404 (ServeMux)
//
// With -tls it serves HTTP/1.1 over TLS with a self-signed certificate.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	backend := flag.String("backend", "", "base URL /fanout calls")
	useTLS := flag.Bool("tls", false, "serve over TLS (self-signed certificate)")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q}`, r.PathValue("id"))
	})
	mux.HandleFunc("POST /items", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "stored %d bytes\n", n)
	})
	mux.HandleFunc("GET /fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "it failed", http.StatusInternalServerError)
	})
	mux.HandleFunc("GET /fanout", func(w http.ResponseWriter, r *http.Request) {
		// The call runs on a goroutine the handler starts: its span must
		// still be a child of this request's span.
		body := make(chan string)
		go func() {
			resp, err := http.Get(*backend + "/users/7")
			if err != nil {
				body <- err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			body <- string(b)
		}()
		fmt.Fprintf(w, "backend said %s\n", <-body)
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *useTLS {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{selfSigned()}})
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	http.Serve(ln, mux)
}

// selfSigned makes a throwaway certificate for 127.0.0.1.
func selfSigned() tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

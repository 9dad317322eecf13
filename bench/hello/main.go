// hello is the server the HTTP overhead benchmark loads: "/" answers at
// once (the worst case for per-request tracing cost), "/sleep" after 1 ms
// (a handler that does some work).
package main

import (
	"flag"
	"fmt"
	"net/http"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello, world\n"))
	})
	http.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		w.Write([]byte("slept\n"))
	})
	fmt.Println("listening on", *addr)
	if err := http.ListenAndServe(*addr, nil); err != nil {
		fmt.Println(err)
	}
}

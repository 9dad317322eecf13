// httpclient makes the requests given as arguments, one after the other,
// and prints each response's status and body: zerotel's tests compare this
// output with and without the agent, and trace its client spans.
//
//	httpclient GET http://127.0.0.1:8080/users/1 POST http://.../items BODY ...
//
// POST and PUT take a body argument; other methods none.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	args := os.Args[1:]
	for len(args) >= 2 {
		method, url := args[0], args[1]
		args = args[2:]
		var body io.Reader
		if method == "POST" || method == "PUT" {
			body = strings.NewReader(args[0])
			args = args[1:]
		}
		req, err := http.NewRequest(method, url, body)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		req.Header.Set("User-Agent", "zerotel-test-client/1.0")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Printf("%s %s: error %v\n", method, url, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %s: %d %q\n", method, url, resp.StatusCode, b)
	}
}

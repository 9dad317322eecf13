// Command benchutil holds the small helpers the bench/*.sh scripts need, so
// they depend on nothing but Go and a POSIX shell:
//
//	benchutil freeport                         a free 127.0.0.1 TCP port
//	benchutil metric URL NAME [LABEL=VALUE...] the value of one Prometheus sample
//	benchutil count-tcp -port P [-pid N] FILE  count zerotel tcp JSON records
//	benchutil count-exec -marker M [-path P] FILE  count zerotel exec JSON records
//
// count-* print one JSON object on stdout.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "freeport":
		err = freePort()
	case "metric":
		if len(args) < 2 {
			usage()
		}
		err = metric(args[0], args[1], args[2:])
	case "count-tcp":
		err = countTCP(args)
	case "count-exec":
		err = countExec(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchutil:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchutil freeport | metric URL NAME [LABEL=VALUE...] | count-tcp -port P [-pid N] FILE | count-exec -marker M [-path P] FILE")
	os.Exit(2)
}

func freePort() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	return nil
}

// metric prints the value of the first sample of name whose labels include
// all the given LABEL=VALUE pairs (text exposition format).
func metric(url, name string, want []string) error {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, name) || len(line) == len(name) {
			continue
		}
		rest := line[len(name):]
		labels := ""
		switch rest[0] {
		case '{':
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		case ' ':
		default:
			continue // a longer metric name
		}
		ok := true
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if !strings.Contains(","+labels+",", fmt.Sprintf(",%s=%q,", k, v)) {
				ok = false
			}
		}
		if ok {
			fmt.Println(strings.Fields(rest)[0])
			return nil
		}
	}
	return fmt.Errorf("no sample %s%v at %s", name, want, url)
}

// eachLine decodes every JSON line of file into a fresh T.
func eachLine[T any](file string, f func(*T)) (lines, bad int, err error) {
	fh, err := os.Open(file)
	if err != nil {
		return 0, 0, err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		lines++
		var v T
		if json.Unmarshal(sc.Bytes(), &v) != nil {
			bad++
			continue
		}
		f(&v)
	}
	return lines, bad, sc.Err()
}

func countTCP(args []string) error {
	fs := flag.NewFlagSet("count-tcp", flag.ExitOnError)
	port := fs.Uint("port", 0, "the load generator's listen port")
	pid := fs.Uint("pid", 0, "the load generator's pid (0: do not count by pid)")
	fs.Parse(args)
	if fs.NArg() != 1 || *port == 0 {
		usage()
	}
	type rec struct {
		PID       uint32         `json:"pid"`
		Comm      string         `json:"comm"`
		Direction string         `json:"direction"`
		Local     netip.AddrPort `json:"local"`
		Peer      netip.AddrPort `json:"peer"`
		BytesSent uint64         `json:"bytes_sent"`
		BytesRecv uint64         `json:"bytes_received"`
		Failed    bool           `json:"failed"`
	}
	var out struct {
		Lines        int `json:"lines"`     // every record the agent printed
		BadLines     int `json:"bad_lines"` // not JSON
		Records      int `json:"records"`   // local or peer port == listen port
		RecordsByPID int `json:"records_by_pid"`
		Connect      int `json:"connect"`
		Accept       int `json:"accept"`
		Failed       int `json:"failed"`
		Bytes64      int `json:"bytes_64_64"` // records with 64 bytes each way
	}
	var err error
	out.Lines, out.BadLines, err = eachLine(fs.Arg(0), func(r *rec) {
		if uint(r.Local.Port()) != *port && uint(r.Peer.Port()) != *port {
			return
		}
		out.Records++
		if *pid != 0 && uint(r.PID) == *pid {
			out.RecordsByPID++
		}
		switch r.Direction {
		case "connect":
			out.Connect++
		case "accept":
			out.Accept++
		}
		if r.Failed {
			out.Failed++
		}
		if r.BytesSent == 64 && r.BytesRecv == 64 {
			out.Bytes64++
		}
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func countExec(args []string) error {
	fs := flag.NewFlagSet("count-exec", flag.ExitOnError)
	marker := fs.String("marker", "", "argument every process of the load had")
	path := fs.String("path", "/bin/true", "the program the load ran")
	fs.Parse(args)
	if fs.NArg() != 1 || *marker == "" {
		usage()
	}
	type rec struct {
		Kind  string   `json:"kind"`
		PID   uint32   `json:"pid"`
		Path  string   `json:"path"`
		Args  []string `json:"args"`
		Error string   `json:"error"`
	}
	var out struct {
		Lines       int `json:"lines"`            // every record the agent printed
		BadLines    int `json:"bad_lines"`        // not JSON
		Execs       int `json:"exec_records"`     // exec of -path with -marker in its args
		ExecsFailed int `json:"exec_failed"`      // of those, with an error
		Exits       int `json:"exit_records"`     // exits of those processes
		AllExecs    int `json:"all_exec_records"` // any exec on the host
		AllExits    int `json:"all_exit_records"` // any exit on the host
	}
	pids := map[uint32]bool{}
	var exits []uint32
	var err error
	out.Lines, out.BadLines, err = eachLine(fs.Arg(0), func(r *rec) {
		switch r.Kind {
		case "exec":
			out.AllExecs++
			if r.Path == *path && slices.Contains(r.Args, *marker) {
				out.Execs++
				pids[r.PID] = true
				if r.Error != "" {
					out.ExecsFailed++
				}
			}
		case "exit":
			out.AllExits++
			exits = append(exits, r.PID)
		}
	})
	if err != nil {
		return err
	}
	for _, p := range exits {
		if pids[p] {
			out.Exits++
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

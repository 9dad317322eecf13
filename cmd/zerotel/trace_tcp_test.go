package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/zerotel/zerotel/internal/testutil"
)

// tcpRecord is one line of `zerotel trace tcp --output json`.
type tcpRecord struct {
	Start, End    time.Time
	PID           uint32
	Comm          string
	Direction     string
	Local, Peer   string
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
	Failed        bool
	Error         string
}

func parseTCPRecords(t *testing.T, out string) []tcpRecord {
	t.Helper()
	var recs []tcpRecord
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var r tcpRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("output line is not JSON: %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

func attrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes {
		v := kv.Value
		switch {
		case v.GetStringValue() != "":
			m[kv.Key] = v.GetStringValue()
		default:
			m[kv.Key] = strconv.FormatInt(v.GetIntValue(), 10)
		}
	}
	return m
}

// TestTraceTCPExportsJSONOTLPAndPrometheus runs the real agent, makes one
// loopback exchange, and checks the same connection on every output: the
// JSON lines, spans at an in-test OTLP receiver (gRPC and HTTP), and the
// Prometheus counters. Then it checks nothing stays in the kernel.
func TestTraceTCPExportsJSONOTLPAndPrometheus(t *testing.T) {
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(strings.ReplaceAll(proto, "/", "_"), func(t *testing.T) {
			rcv := httpReceiver(t)
			if proto == "grpc" {
				rcv = grpcReceiver(t)
			}
			a := startAgent(t, []string{"OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_METRICS_EXPORTER=none", "OTEL_RESOURCE_ATTRIBUTES=deployment.environment.name=test"},
				"trace", "tcp", "--output", "json", "--metrics-addr", "127.0.0.1:0",
				"--otlp-endpoint", rcv.URL, "--otlp-protocol", proto, "--service-name", "zt-test")
			before := scrape(t, a.metricsURL())
			progs, links := bpfIDs(t, a.cmd.Process.Pid)
			if len(progs) == 0 || len(links) == 0 {
				t.Fatalf("agent holds no BPF programs (%v) or links (%v)", progs, links)
			}

			cli, srv := testutil.TCPExchange(t, "127.0.0.1:0", 1000, 2000)
			time.Sleep(500 * time.Millisecond) // the close records' ring-buffer read
			after := scrape(t, a.metricsURL())
			out := a.stop(t)

			// JSON: exactly one record per side.
			var connect, accept *tcpRecord
			for _, r := range parseTCPRecords(t, out) {
				switch {
				case r.Local == cli.Local.String():
					if connect != nil {
						t.Errorf("two records for the client side")
					}
					connect = &r
				case r.Local == srv.Local.String() && r.Peer == srv.Peer.String():
					if accept != nil {
						t.Errorf("two records for the server side")
					}
					accept = &r
				}
			}
			if connect == nil || accept == nil {
				t.Fatalf("missing records: connect %v accept %v in\n%s", connect, accept, out)
			}
			if connect.PID != cli.PID || connect.Direction != "connect" || connect.BytesSent != 1000 || connect.BytesReceived != 2000 {
				t.Errorf("client record %+v", *connect)
			}
			if accept.PID != srv.PID || accept.Direction != "accept" || accept.BytesSent != 2000 || accept.BytesReceived != 1000 {
				t.Errorf("server record %+v", *accept)
			}

			// OTLP: a CLIENT and a SERVER span with the record's exact times.
			spans, res := rcv.snapshot()
			check := func(rec *tcpRecord, name string, kind tracepb.Span_SpanKind, want map[string]string) {
				t.Helper()
				for i, s := range spans {
					a := attrs(s)
					if s.Name != name || a["network.local.port"] != want["network.local.port"] {
						continue
					}
					if s.Kind != kind || s.StartTimeUnixNano != uint64(rec.Start.UnixNano()) || s.EndTimeUnixNano != uint64(rec.End.UnixNano()) {
						t.Errorf("%s span kind %v times %d..%d, want %v %d..%d", name, s.Kind, s.StartTimeUnixNano, s.EndTimeUnixNano, kind, rec.Start.UnixNano(), rec.End.UnixNano())
					}
					for k, v := range want {
						if a[k] != v {
							t.Errorf("%s span %s=%q, want %q", name, k, a[k], v)
						}
					}
					if res[i]["service.name"] != "zt-test" || res[i]["deployment.environment.name"] != "test" {
						t.Errorf("resource %v lacks service.name=zt-test and OTEL_RESOURCE_ATTRIBUTES", res[i])
					}
					return
				}
				t.Errorf("no %s span for local port %s among %d spans", name, want["network.local.port"], len(spans))
			}
			check(connect, "tcp.connect", tracepb.Span_SPAN_KIND_CLIENT, map[string]string{
				"network.transport": "tcp", "network.type": "ipv4",
				"network.local.port": fmt.Sprint(cli.Local.Port()), "network.peer.address": "127.0.0.1",
				"network.peer.port": fmt.Sprint(cli.Peer.Port()), "server.address": "127.0.0.1", "server.port": fmt.Sprint(cli.Peer.Port()),
				"process.pid": fmt.Sprint(cli.PID), "process.executable.name": "tcppeer",
				"zerotel.tcp.bytes_sent": "1000", "zerotel.tcp.bytes_received": "2000",
			})
			check(accept, "tcp.accept", tracepb.Span_SPAN_KIND_SERVER, map[string]string{
				"network.local.port": fmt.Sprint(srv.Local.Port()), "client.address": "127.0.0.1",
				"client.port": fmt.Sprint(srv.Peer.Port()), "server.port": fmt.Sprint(srv.Local.Port()),
				"process.pid": fmt.Sprint(srv.PID),
			})

			// Prometheus: the counters moved by at least this exchange.
			for _, m := range []string{
				`zerotel_tcp_connections_total{.*zerotel_tcp_direction="connect".*}`,
				`zerotel_tcp_connections_total{.*zerotel_tcp_direction="accept".*}`,
				`zerotel_probe_events_read_total{.*probe="tcp".*}`,
				`zerotel_tcp_connection_duration_seconds_count{.*zerotel_tcp_direction="connect".*}`,
			} {
				if d := after.sum(m) - before.sum(m); d < 1 {
					t.Errorf("%s moved by %v, want >= 1", m, d)
				}
			}
			if !after.has(`zerotel_probe_events_lost_total{.*probe="tcp".*}`) {
				t.Errorf("no events-lost counter for the tcp probe")
			}

			// Nothing of the agent's stays in the kernel after it exits.
			for _, id := range progs {
				if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id)); err == nil {
					info, _ := p.Info()
					p.Close()
					t.Errorf("program %d (%s) still loaded after zerotel exited", id, info.Name)
				}
			}
			for _, id := range links {
				if l, err := link.NewFromID(link.ID(id)); err == nil {
					l.Close()
					t.Errorf("link %d still exists after zerotel exited", id)
				} else if !errors.Is(err, os.ErrNotExist) {
					t.Logf("link %d: %v", id, err)
				}
			}
		})
	}
}

// metrics is one Prometheus scrape.
type metrics string

func scrape(t *testing.T, url string) metrics {
	t.Helper()
	if url == "" {
		t.Fatal("agent did not log its metrics URL")
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return metrics(b)
}

// sum adds the values of the samples whose name and labels match pattern.
func (m metrics) sum(pattern string) float64 {
	re := regexp.MustCompile("^" + pattern + ` (\S+)$`)
	var total float64
	for _, line := range strings.Split(string(m), "\n") {
		if g := re.FindStringSubmatch(line); g != nil {
			v, _ := strconv.ParseFloat(g[1], 64)
			total += v
		}
	}
	return total
}

func (m metrics) has(pattern string) bool {
	return regexp.MustCompile("(?m)^" + pattern + ` \S+$`).MatchString(string(m))
}

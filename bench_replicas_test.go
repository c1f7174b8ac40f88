package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"mxid/db/pgtest"
)

// bench-replicas against two running replicas: it registers, validates
// addresses through its own SMTP sink, binds, measures propagation, kills
// the leader and times the failover, and prints every figure.
func TestBenchReplicas(t *testing.T) {
	smtp, hs := freePort(t), freePort(t)
	c := startCluster(t, pgtest.New(t), 2, clusterOpts{
		pins:  fmt.Sprintf(`"bench.invalid" = "http://127.0.0.1:%d"`, hs),
		extra: fmt.Sprintf("[email]\nmode = \"plain\"\nhost = \"127.0.0.1\"\nport = %d\n", smtp),
	})
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"bench-replicas", "-urls", c.nodes[0].api + "," + c.nodes[1].api,
		"-metrics", c.nodes[0].metrics + "," + c.nodes[1].metrics, "-binds", "40", "-clients", "4", "-samples", "20",
		"-smtp", fmt.Sprintf("127.0.0.1:%d", smtp), "-homeserver", fmt.Sprintf("127.0.0.1:%d", hs), "-failover"}, &out, &errOut)
	if err != nil {
		t.Fatalf("bench-replicas: %v\n%s%s", err, out.String(), errOut.String())
	}
	t.Logf("\n%s", out.String())
	for _, want := range []string{
		`(?m)^validated 40 addresses in [\d.]+s \([\d.]+ sessions/s`,
		`(?m)^binds: 40 in [\d.]+s: [\d.]+ binds/s, latency p50 [\d.]+ ms, p99 [\d.]+ ms, failed 0$`,
		`(?m)^propagation \S+ -> \S+ under bind load \(20 samples, 3 load clients binding [\d.]+/s\): p50 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms$`,
		`(?m)^failover: killed the leader r\d \(pid \d+\) with SIGKILL; \S+ leads after \S+$`,
	} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("output lacks %s", want)
		}
	}
	if n := len(c.live()); n != 1 {
		t.Errorf("%d replicas running after the failover, want 1", n)
	}
	if strings.Contains(errOut.String(), "panic") {
		t.Errorf("stderr: %s", errOut.String())
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"mxid/db/pg"
	"mxid/db/pgtest"
)

// balancer is a TCP load balancer stand-in on 127.0.0.1:port: each
// connection goes to the address pick names at the time it arrives.
func balancer(t *testing.T, port int, pick func() string) {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer in.Close()
				out, err := net.Dial("tcp", pick())
				if err != nil {
					return
				}
				defer out.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(out, in); done <- struct{}{} }()
				go func() { io.Copy(in, out); done <- struct{}{} }()
				<-done
			})
		}
	})
}

// startServeProcess runs `mxid serve -config PATH` as a process of its own
// (certmagic keeps challenges in a global: replicas in one process would
// share them) until the test ends, and returns its log.
func startServeProcess(t *testing.T, config string) *syncBuffer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mxid.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	cmd := exec.Command(mxidBinary(t), "serve", "-config", path)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("mxid serve: %v", err)
		}
		if t.Failed() {
			t.Logf("mxid log:\n%s", log.String())
		}
	})
	return log
}

// TestACMEReplicas runs two `mxid serve` replicas in acme mode on one
// PostgreSQL database behind a load balancer stand-in, against a real
// pebble that really validates: they obtain ONE certificate with ONE
// account (pebble issues one; the storage holds one), both serve it, and
// the challenge is answered by the replica that did not start the order
// (the balancer sends pebble's validation there), from the shared storage.
func TestACMEReplicas(t *testing.T) {
	for _, challenge := range []string{"http-01", "tls-alpn-01"} {
		t.Run(challenge, func(t *testing.T) {
			lbHTTP, lbHTTPS := freePort(t), freePort(t)
			p := startPebble(t, lbHTTP, lbHTTPS) // pebble validates through the balancer
			url := pgtest.New(t)
			domain := "ha.example.test"
			type replica struct {
				http, https int
				log         atomic.Pointer[syncBuffer] // read by the balancer
			}
			rs := []*replica{{http: freePort(t), https: freePort(t)}, {http: freePort(t), https: freePort(t)}}
			// The order's validation goes to the replica that did not
			// start it (any other connection to the first).
			other := func(port func(*replica) int) func() string {
				return func() string {
					to := rs[0]
					if log := rs[0].log.Load(); log != nil && strings.Contains(log.String(), "trying to solve challenge") {
						to = rs[1]
					}
					return fmt.Sprintf("127.0.0.1:%d", port(to))
				}
			}
			balancer(t, lbHTTP, other(func(r *replica) int { return r.http }))
			balancer(t, lbHTTPS, other(func(r *replica) int { return r.https }))
			for _, r := range rs {
				config := acmeConfig(t.TempDir(), domain, r.https, r.http, p, fmt.Sprintf("%q", challenge))
				r.log.Store(startServeProcess(t, config+fmt.Sprintf("\n[database]\nurl = %q\n", url)))
			}

			serials := map[string]bool{}
			for i, r := range rs {
				resp, _ := httpsGet(t, nil, fmt.Sprintf("127.0.0.1:%d", r.https), domain, "/_matrix/identity/v2", p.IssuingRoot)
				if resp.StatusCode != 200 {
					t.Errorf("replica %d over HTTPS: %d", i, resp.StatusCode)
				}
				serials[resp.TLS.PeerCertificates[0].SerialNumber.String()] = true
			}
			if len(serials) != 1 {
				t.Errorf("the replicas serve %d different certificates, want one: %v", len(serials), serials)
			}

			obtained, waited := 0, 0
			for _, r := range rs {
				log := r.log.Load().String()
				switch {
				case strings.Contains(log, "certificate obtained successfully"):
					obtained++
				case strings.Contains(log, "certificate already exists in storage"):
					waited++
					if !servedDistributed(log) {
						t.Errorf("the replica that did not order did not answer the challenge from the shared storage")
					}
				}
			}
			if obtained != 1 || waited != 1 {
				t.Errorf("%d replicas obtained the certificate and %d found it in storage; want 1 and 1", obtained, waited)
			}
			if n := strings.Count(p.log.String(), "Issued certificate serial"); n != 1 {
				t.Errorf("pebble issued %d certificates, want 1", n)
			}
			if n := strings.Count(p.log.String(), "There are now 1 accounts"); n != 1 || strings.Contains(p.log.String(), "There are now 2 accounts") {
				t.Errorf("pebble's accounts: %d times one, want one account", n)
			}

			// What the database holds: one account, one certificate.
			store, err := pg.Open(context.Background(), url, pg.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			keys, err := store.CertList(t.Context(), "", true)
			if err != nil {
				t.Fatal(err)
			}
			var certs, users int
			for _, k := range keys {
				if strings.HasPrefix(k, "certificates/") && strings.HasSuffix(k, ".crt") {
					certs++
				}
				if parts := strings.Split(k, "/"); len(parts) == 4 && parts[0] == "acme" && parts[2] == "users" {
					users++
				}
			}
			if certs != 1 || users != 1 {
				t.Errorf("the shared storage holds %d certificates and %d accounts, want 1 and 1: %q", certs, users, keys)
			}
		})
	}
}

// servedDistributed reports whether a replica's log shows it answered an
// ACME challenge it had not started (certmagic's "distributed" solving,
// from the storage).
func servedDistributed(log string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "served key authentication") && strings.Contains(line, "distributed=true") {
			return true
		}
	}
	return false
}

// Package dnstest is an authoritative DNS server on 127.0.0.1 for tests
// (miekg/dns, UDP and TCP on the same port), answering from a zone given as
// records in zone-file syntax; every other name is NXDOMAIN.
//
// It is test support: only _test.go files import it (those of lookup and of
// main's `mxid check dns`). miekg/dns lives in the lookup area, so it does
// too.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Server is one running DNS server.
type Server struct {
	// Addr is "127.0.0.1:PORT", for [outbound] dns_server.
	Addr string
	// Queries counts the questions answered.
	Queries atomic.Int64
}

// Start serves records like "_matrix-identity._tcp.example.org. 60 IN SRV
// 10 5 8443 is.example.org." until the test ends.
func Start(t testing.TB, records ...string) *Server {
	t.Helper()
	zone := map[string][]dns.RR{}
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		k := strings.ToLower(rr.Header().Name) + "/" + dns.TypeToString[rr.Header().Rrtype]
		zone[k] = append(zone[k], rr)
	}
	s := &Server{}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		s.Queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		q := req.Question[0]
		m.Answer = zone[strings.ToLower(q.Name)+"/"+dns.TypeToString[q.Qtype]]
		if len(m.Answer) == 0 {
			m.Rcode = dns.RcodeNameError
			for k := range zone { // the name exists with other types: NODATA
				if strings.HasPrefix(k, strings.ToLower(q.Name)+"/") {
					m.Rcode = dns.RcodeSuccess
				}
			}
		}
		w.WriteMsg(m)
	})
	pc, ln, err := listenBoth()
	if err != nil {
		t.Fatal(err)
	}
	// Shutdown refuses a server that has not started yet (and it would
	// then serve on after the test): return once both serve.
	started := make(chan error, 4) // nil when serving, or the error of a failed start
	notify := func() { started <- nil }
	udp := &dns.Server{PacketConn: pc, Handler: handler, NotifyStartedFunc: notify}
	tcp := &dns.Server{Listener: ln, Handler: handler, NotifyStartedFunc: notify}
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	for _, srv := range []*dns.Server{udp, tcp} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				started <- err
			}
		}()
	}
	for range 2 {
		if err := <-started; err != nil {
			t.Fatal(err)
		}
	}
	s.Addr = pc.LocalAddr().String()
	return s
}

// listenBoth binds UDP and TCP on the same free 127.0.0.1 port. The kernel
// picks a free UDP port; the same TCP port may be taken (by any process's
// listener or outgoing connection), so it tries again with another port.
func listenBoth() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 100 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP in 100 tries: %w", lastErr)
}

package slapdtest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
)

// Ports handed out by FreePort come from below Linux's default ephemeral
// range (32768–60999), which the kernel draws from for every outgoing
// connection and every listener on port 0: a port it could hand to some
// other process between our probe and the server's bind would be taken
// about once in a few hundred starts on a busy machine. Here only another
// explicit choice can take it.
const (
	portLow  = 20000
	portHigh = 32767
)

var ports struct {
	once sync.Once
	mu   sync.Mutex
	next int
}

// FreePort returns a 127.0.0.1 port free for TCP and UDP a moment ago, for
// a server that must be told its port before it binds (slapd, pebble, mxid
// serve), or for an address where nothing answers. It hands out each port
// once per test binary, going up from a random start, so two calls never
// return the same port; a caller that starts another process should still
// try again with a new port when the bind fails.
func FreePort(t testing.TB) int {
	t.Helper()
	ports.once.Do(func() { ports.next = portLow + rand.IntN(portHigh-portLow+1) })
	ports.mu.Lock()
	defer ports.mu.Unlock()
	for range portHigh - portLow + 1 {
		p := ports.next
		ports.next++
		if ports.next > portHigh {
			ports.next = portLow
		}
		if free(fmt.Sprint(p)) {
			return p
		}
	}
	t.Fatalf("no free port in 127.0.0.1:%d-%d", portLow, portHigh)
	return 0
}

// free reports whether 127.0.0.1:port can be bound for TCP and UDP now.
func free(port string) bool {
	addr := net.JoinHostPort("127.0.0.1", port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

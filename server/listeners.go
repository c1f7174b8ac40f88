package server

import (
	"net"
	"net/http"
)

// Listeners are the sockets mxid serves on.
type Listeners struct {
	// API serves the identity API (TLS-wrapped unless the mode is off).
	API net.Listener
	// HTTP, when set, serves HTTPHandler: ACME HTTP-01 challenges and a
	// redirect to HTTPS.
	HTTP        net.Listener
	HTTPHandler http.Handler
	// Metrics, when set, serves Prometheus metrics.
	Metrics net.Listener
	// Admin, when set, is the admin unix socket (mxid backup).
	Admin net.Listener
}

// Close closes every listener that is set (for error paths before Serve).
func (l Listeners) Close() {
	for _, ln := range []net.Listener{l.API, l.HTTP, l.Metrics, l.Admin} {
		if ln != nil {
			ln.Close()
		}
	}
}

package server

// Prometheus metrics: the [metrics] section, the Metrics registry and the
// request-observing middleware. This is the only file that imports
// prometheus. Packages that must not import server (lookup, mail) report
// through plain func values main takes from a *Metrics:
//
//	lookup:  m.Lookup       func(source, outcome string, d time.Duration) (lookup.Deps.Observe)
//	mail:    m.Delivery     func(channel, outcome string)
//	admin:   m.AdminAction, m.Unbind, m.Erased (Admin, in this package)
//	gauges:  m.SetIndexSize(func() int), m.SetPepperAge(func() time.Duration),
//	         m.SetQueueDepth(func() int), m.SetDirectoryEntries(func() int)
//	replica: m.SetReplica(name string, pid int), m.SetLeader(func() bool),
//	         m.SetChangeLag(changes func() int64, seconds func() float64)
//
// Every method is safe on a nil *Metrics (metrics off), so callers never
// check.

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"mxid/db"
)

// MetricsConfig is the [metrics] section.
type MetricsConfig struct {
	// Enabled serves Prometheus metrics on Listen.
	Enabled bool `toml:"enabled"`
	// Listen is the metrics address; keep it on loopback (or a private
	// network) unless a firewall guards it.
	Listen string `toml:"listen"`
}

// DefaultMetricsConfig is [metrics] off, on loopback when turned on.
func DefaultMetricsConfig() MetricsConfig {
	return MetricsConfig{Listen: "127.0.0.1:9090"}
}

// Validate reports every problem in the [metrics] section.
func (c *MetricsConfig) Validate() []error {
	if c.Enabled && !validListen(c.Listen) {
		return []error{fmt.Errorf("metrics.listen: %q must be IP:port like \"127.0.0.1:9090\"", c.Listen)}
	}
	return nil
}

// ListenMetrics opens the metrics listener when metrics are enabled (nil
// otherwise) and logs the decision.
func ListenMetrics(c MetricsConfig, log *slog.Logger) (net.Listener, error) {
	if !c.Enabled {
		log.Info("metrics off")
		return nil, nil
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", c.Listen, err)
	}
	addr := ln.Addr().String()
	if ap, err := netip.ParseAddrPort(addr); err == nil && !ap.Addr().IsLoopback() {
		log.Warn("metrics are served beyond loopback; make sure a firewall guards them", "listen", addr)
	}
	log.Info("serving metrics", "listen", "http://"+addr+"/metrics")
	return ln, nil
}

// Metrics is mxid's Prometheus registry.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	lookups   *prometheus.CounterVec
	lookupDur *prometheus.HistogramVec
	delivery  *prometheus.CounterVec
	dirSearch *prometheus.CounterVec
	dirFound  *prometheus.CounterVec
	claims    prometheus.Counter
	admin     *prometheus.CounterVec
	unbinds   *prometheus.CounterVec
	erasures  *prometheus.CounterVec
	erased    *prometheus.CounterVec

	mu     sync.Mutex
	gauges map[string]*gaugeSlot
}

// gaugeSlot is a gauge whose value function is set after start-up.
type gaugeSlot struct {
	mu sync.Mutex
	fn func() float64
}

func (g *gaugeSlot) value() float64 {
	g.mu.Lock()
	fn := g.fn
	g.mu.Unlock()
	return fn()
}

// NewMetrics builds the registry: Go runtime and process metrics, requests,
// lookups, deliveries, and the store's size and bindings count (read on
// scrape; the count at most every 15 s, as it walks the bindings bucket).
func NewMetrics(store interface {
	Path() string
	CountBindings() (int, error)
}) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_http_requests_total",
			Help: "HTTP requests to the API by route pattern (\"unmatched\" for unknown paths and methods) and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mxid_http_request_duration_seconds",
			Help:    "Time to answer an API request, by route pattern.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_lookups_total",
			Help: "Lookup requests that reached each source (local, ldap, dns, forwarders; index for sha256), by outcome (found: at least one address found, not_found, error, timeout, skipped: a remote source the requester may not use). Counts requests, not addresses.",
		}, []string{"source", "outcome"}),
		lookupDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mxid_lookup_duration_seconds",
			Help:    "Time a lookup source took to answer (skipped sources not included).",
			Buckets: prometheus.DefBuckets,
		}, []string{"source"}),
		delivery: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_deliveries_total",
			Help: "Emails and SMS handed to the configured gateway, by channel (email, sms) and outcome (sent, failed).",
		}, []string{"channel", "outcome"}),
		dirSearch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_directory_searches_total",
			Help: "User directory searches whose token the homeserver accepted or refused, by outcome (merged: the homeserver's results with the directory's; directory_only: the homeserver's search failed after its whoami; refused: the homeserver's 401 or 403 passed back; unverified: the homeserver could not check the token).",
		}, []string{"outcome"}),
		dirFound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_directory_results_total",
			Help: "Entries returned by user directory searches, by source (homeserver, directory).",
		}, []string{"source"}),
		claims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mxid_onbind_claims_total",
			Help: "Onbind deliveries this replica claimed from the queue (each claimed job is delivered by this replica alone until it is done or its claim lapses).",
		}),
		admin: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_admin_actions_total",
			Help: "mxid admin actions (show, unbind, erase, invites, queue, queue_retry, queue_drop, stats, audit), by outcome (ok, refused: bad input or nothing found, error).",
		}, []string{"action", "outcome"}),
		unbinds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_unbinds_total",
			Help: "Bindings removed, by who removed them (user: a validated session; homeserver: a signed request; admin: mxid admin unbind; erase: mxid admin erase).",
		}, []string{"by"}),
		erasures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_erasures_total",
			Help: "Erasures, by who asked (admin: mxid admin erase; homeserver: the signed unbind of a user's last 3PID, which withdraws the user's pending invites).",
		}, []string{"by"}),
		erased: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mxid_erased_records_total",
			Help: "Records removed by erasures, by kind (bindings, invites_sent, invites_received, deliveries, tokens, terms, sessions).",
		}, []string{"kind"}),
		gauges: map[string]*gaugeSlot{},
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.latency, m.lookups, m.lookupDur, m.delivery, m.dirSearch, m.dirFound, m.claims, m.admin, m.unbinds, m.erasures, m.erased)
	if store == nil {
		return m
	}
	if path := store.Path(); fileExists(path) { // the bbolt file; PostgreSQL's size is PostgreSQL's to report
		m.setGauge("mxid_store_size_bytes", "Size of the database file (bbolt reuses free pages but never shrinks the file).", func() float64 {
			fi, err := os.Stat(path)
			if err != nil {
				return 0
			}
			return float64(fi.Size())
		})
	}
	{
		var cmu sync.Mutex
		var count float64
		var at time.Time
		m.setGauge("mxid_bindings", "Local 3PID bindings stored.", func() float64 {
			cmu.Lock()
			defer cmu.Unlock()
			if time.Since(at) >= 15*time.Second {
				if n, err := store.CountBindings(); err == nil {
					count, at = float64(n), time.Now()
				}
			}
			return count
		})
	}
	return m
}

// fileExists reports whether path names a file.
func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// setGauge registers a gauge read from fn on scrape, or replaces the
// function of one already registered.
func (m *Metrics) setGauge(name, help string, fn func() float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g, ok := m.gauges[name]; ok {
		g.mu.Lock()
		g.fn = fn
		g.mu.Unlock()
		return
	}
	g := &gaugeSlot{fn: fn}
	m.gauges[name] = g
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, g.value))
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Lookup records one lookup request asked of a source ("local", "ldap",
// "dns", "forwarders", "index") with its outcome ("found", "not_found",
// "error", "timeout", "skipped") and duration; a skipped source took no
// time and is left out of the duration histogram.
func (m *Metrics) Lookup(source, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.lookups.WithLabelValues(source, outcome).Inc()
	if outcome != "skipped" {
		m.lookupDur.WithLabelValues(source).Observe(d.Seconds())
	}
}

// Delivery records one email or SMS: channel "email" or "sms", outcome
// "sent" or "failed".
func (m *Metrics) Delivery(channel, outcome string) {
	if m == nil {
		return
	}
	m.delivery.WithLabelValues(channel, outcome).Inc()
}

// outcome is the Delivery outcome of a send's error.
func outcome(err error) string {
	if err != nil {
		return "failed"
	}
	return "sent"
}

// AdminAction records one mxid admin action with its outcome ("ok",
// "refused", "error").
func (m *Metrics) AdminAction(action, outcome string) {
	if m == nil {
		return
	}
	m.admin.WithLabelValues(action, outcome).Inc()
}

// Unbind records one binding removed, by "user", "homeserver", "admin"
// or "erase".
func (m *Metrics) Unbind(by string) {
	if m == nil {
		return
	}
	m.unbinds.WithLabelValues(by).Inc()
}

// Erased records one erasure asked by "admin" or "homeserver" and what it
// removed.
func (m *Metrics) Erased(by string, e db.Erased) {
	if m == nil {
		return
	}
	m.erasures.WithLabelValues(by).Inc()
	for kind, n := range map[string]int{"bindings": len(e.Bindings), "invites_sent": e.InvitesSent, "invites_received": e.InvitesReceived,
		"deliveries": e.Deliveries, "tokens": e.Tokens, "terms": e.Terms, "sessions": e.Sessions} {
		m.erased.WithLabelValues(kind).Add(float64(n))
	}
}

// SetIndexSize reports the lookup hash index's entry count.
func (m *Metrics) SetIndexSize(fn func() int) {
	if m == nil {
		return
	}
	m.setGauge("mxid_lookup_index_entries", "Entries in the in-process sha256 lookup index.", func() float64 { return float64(fn()) })
}

// SetPepperAge reports the age of the current lookup pepper.
func (m *Metrics) SetPepperAge(fn func() time.Duration) {
	if m == nil {
		return
	}
	m.setGauge("mxid_lookup_pepper_age_seconds", "Age of the current lookup pepper.", func() float64 { return fn().Seconds() })
}

// DirectorySearch records one user directory search: its outcome and how
// many of its results came from the homeserver and from the directory.
func (m *Metrics) DirectorySearch(outcome string, fromHomeserver, fromDirectory int) {
	if m == nil {
		return
	}
	m.dirSearch.WithLabelValues(outcome).Inc()
	m.dirFound.WithLabelValues("homeserver").Add(float64(fromHomeserver))
	m.dirFound.WithLabelValues("directory").Add(float64(fromDirectory))
}

// SetDirectoryEntries reports the number of directory entries the user
// directory search can find.
func (m *Metrics) SetDirectoryEntries(fn func() int) {
	if m == nil {
		return
	}
	m.setGauge("mxid_directory_entries", "Directory entries the user directory search can find (the searchable entries of the last stored sync).", func() float64 { return float64(fn()) })
}

// SetQueueDepth reports the number of onbind deliveries waiting.
func (m *Metrics) SetQueueDepth(fn func() int) {
	if m == nil {
		return
	}
	m.setGauge("mxid_onbind_queue_depth", "Onbind deliveries to homeservers waiting (including retries).", func() float64 { return float64(fn()) })
}

// claimed counts onbind jobs claimed from the queue.
func (m *Metrics) claimed(n int) {
	if m == nil || n == 0 {
		return
	}
	m.claims.Add(float64(n))
}

// SetReplica names this replica: mxid_replica_info{replica, pid} 1, so
// that every series of a replica can be told apart and joined to it. Call
// it once.
func (m *Metrics) SetReplica(name string, pid int) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "mxid_replica_info",
		Help:        "This replica's name ([database] replica_name, or host-pid) and process id; always 1.",
		ConstLabels: prometheus.Labels{"replica": name, "pid": fmt.Sprint(pid)},
	}, func() float64 { return 1 }))
}

// SetLeader reports whether this replica leads (runs the jobs that run
// once: pepper rotation, directory sync, sweeps, change-log pruning).
func (m *Metrics) SetLeader(fn func() bool) {
	if m == nil {
		return
	}
	m.setGauge("mxid_replica_leader", "1 while this replica leads (runs pepper rotation, directory sync, sweeps), else 0.", func() float64 {
		if fn() {
			return 1
		}
		return 0
	})
}

// SetChangeLag reports how far this replica's lookup index is behind the
// change log: in changes, and in seconds since it last read the log to its
// end.
func (m *Metrics) SetChangeLag(changes func() int64, seconds func() float64) {
	if m == nil {
		return
	}
	m.setGauge("mxid_replica_lag_changes", "Changes in the log (binds, unbinds, ...) this replica's index has not applied yet.", func() float64 { return float64(changes()) })
	m.setGauge("mxid_replica_lag_seconds", "Seconds since this replica's index last applied the change log to its end.", seconds)
}

// observe counts every request by route pattern and status and times it.
// It sits outside cors, which passes the same *http.Request on to the mux,
// so r.Pattern is the matched pattern once the handler returns.
func (s *Server) observe(next http.Handler) http.Handler {
	if s.metrics == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		s.metrics.requests.WithLabelValues(route, fmt.Sprint(status)).Inc()
		s.metrics.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mxid/lookup/threepid"
)

// benchServerName is the homeserver of the bench's user: the replicas pin
// it to the bench's stand-in, which vouches for the user's OpenID token.
const benchServerName = "bench.invalid"

// benchUnlimited turns off the rate limits a bench runs into: many
// validations and binds, and lookups of one account, from one address.
const benchUnlimited = `[ratelimit]
request_token = { burst = 0, every = "1s" }
email_address = { burst = 0, every = "1s" }
attempts = { burst = 0, every = "1s" }
register = { burst = 0, every = "1s" }
[lookup.rate_per_account]
burst = 0
[lookup.rate_per_ip]
burst = 0
[lookup.rate_per_homeserver]
burst = 0`

// benchReplicasConfig is what the replicas' configuration needs for
// bench-replicas (printed by -h).
const benchReplicasConfig = `[email]
mode = "plain"
host = "127.0.0.1"
port = 2525                                   # -smtp
[outbound.pins]
"bench.invalid" = "http://127.0.0.1:8448"     # -homeserver
` + benchUnlimited

// cmdBenchReplicas implements `mxid bench-replicas`: binds per second,
// propagation of a bind from one replica to another under bind load, and
// the leader's failover, against running servers. Binds go through the
// real flow: the bench registers with an OpenID token its own homeserver
// stand-in vouches for, and validates each address with the token its own
// SMTP sink receives; only the bind calls are timed.
func cmdBenchReplicas(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench-replicas")
	urls := fs.String("urls", "", "base URLs of the running replicas, comma-separated; binds go to each in turn, propagation is measured from the first to the second")
	metricsURLs := fs.String("metrics", "", "their metrics URLs (http://host:port/metrics), comma-separated, for -failover")
	binds := fs.Int("binds", 1000, "binds in the bind-rate phase")
	clients := fs.Int("clients", 8, "concurrent clients")
	samples := fs.Int("samples", 200, "propagation samples: binds on the first replica looked up on the second, under the bind load of the other clients")
	smtpAddr := fs.String("smtp", "127.0.0.1:2525", "where the bench's SMTP sink listens (the replicas' [email] sends there)")
	hsAddr := fs.String("homeserver", "127.0.0.1:8448", "where the bench's homeserver stand-in listens (the replicas pin "+benchServerName+" to it)")
	failover := fs.Bool("failover", false, "at the end, kill the leader with SIGKILL (it must run on this host; found through -metrics) and time until another leads")
	usage := fs.Usage
	fs.Usage = func() {
		usage()
		fmt.Fprintf(fs.Output(), "\nThe servers' configuration needs, besides their own:\n\n%s\n", benchReplicasConfig)
	}
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	b := &benchReplicas{out: stdout, client: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 4 * *clients}}}
	for _, u := range strings.Split(*urls, ",") {
		if u = strings.TrimSuffix(strings.TrimSpace(u), "/"); u != "" {
			b.urls = append(b.urls, u)
		}
	}
	for _, u := range strings.Split(*metricsURLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			b.metrics = append(b.metrics, u)
		}
	}
	switch {
	case len(b.urls) == 0:
		return usageError{errors.New("-urls is required")}
	case *binds < 1 || *clients < 1 || *samples < 0:
		return usageError{errors.New("-binds and -clients must be >= 1, -samples >= 0")}
	case *failover && len(b.metrics) < 2:
		return usageError{errors.New("-failover needs the metrics URLs of at least two replicas (-metrics)")}
	}
	sink, err := startSMTPSink(*smtpAddr)
	if err != nil {
		return fmt.Errorf("-smtp: %w", err)
	}
	defer sink.close()
	b.sink = sink
	stopHS, err := startBenchHomeserver(*hsAddr)
	if err != nil {
		return fmt.Errorf("-homeserver: %w", err)
	}
	defer stopHS()
	if err := b.register(ctx); err != nil {
		return err
	}
	fmt.Fprintf(b.out, "bench-replicas: %d server(s), %d clients\n", len(b.urls), *clients)

	// Binds per second, over every replica.
	start := time.Now()
	sessions, err := b.prepare(ctx, *binds, *clients)
	if err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(b.out, "validated %d addresses in %.1fs (%s sessions/s: requestToken, mail, submitToken)\n", *binds, el.Seconds(), rate(float64(*binds)/el.Seconds()))
	lat, failed, el := b.bindAll(ctx, sessions, *clients)
	fmt.Fprintf(b.out, "binds: %d in %.2fs: %s binds/s, latency p50 %s, p99 %s, failed %d\n",
		len(lat), el.Seconds(), rate(float64(len(lat))/el.Seconds()), pctMS(lat, 0.50), pctMS(lat, 0.99), failed)

	if len(b.urls) >= 2 && *samples > 0 {
		if err := b.propagation(ctx, *samples, max(1, *clients-1)); err != nil {
			return err
		}
	}
	if *failover {
		return b.failover(ctx)
	}
	return nil
}

type benchReplicas struct {
	urls, metrics []string
	client        *http.Client
	out           io.Writer
	sink          *smtpSink
	token         string
	run           string // distinguishes this run's addresses
	next          atomic.Int64
}

// benchSession is a validated session, ready to bind.
type benchSession struct{ address, sid, secret string }

// do sends one JSON request and decodes the answer; a non-2xx status is an
// error naming the errcode.
func (b *benchReplicas) do(ctx context.Context, method, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if b.token != "" {
		req.Header.Set("Authorization", "Bearer "+b.token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Errcode, Error string }
		json.Unmarshal(raw, &e)
		return fmt.Errorf("%s %s: %d %s %s", method, url, resp.StatusCode, e.Errcode, e.Error)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// register makes an account on the first replica (the others share it)
// and accepts every policy.
func (b *benchReplicas) register(ctx context.Context) error {
	var r [8]byte
	rand.Read(r[:])
	b.run = hex.EncodeToString(r[:4])
	var reg struct{ Token string }
	err := b.do(ctx, "POST", b.urls[0]+"/_matrix/identity/v2/account/register", map[string]any{
		"access_token": "bench" + hex.EncodeToString(r[:]), "token_type": "Bearer", "matrix_server_name": benchServerName, "expires_in": 3600}, &reg)
	if err != nil {
		return fmt.Errorf("registering (is %s pinned to -homeserver?): %w", benchServerName, err)
	}
	b.token = reg.Token
	var terms struct {
		Policies map[string]map[string]any `json:"policies"`
	}
	if err := b.do(ctx, "GET", b.urls[0]+"/_matrix/identity/v2/terms", nil, &terms); err != nil {
		return err
	}
	accept := []string{}
	for _, p := range terms.Policies {
		for _, v := range p {
			if doc, ok := v.(map[string]any); ok {
				if u, ok := doc["url"].(string); ok {
					accept = append(accept, u)
				}
			}
		}
	}
	return b.do(ctx, "POST", b.urls[0]+"/_matrix/identity/v2/terms", map[string]any{"user_accepts": accept}, nil)
}

// session validates a new address through url: requestToken, the token
// from the mail the sink receives, submitToken.
func (b *benchReplicas) session(ctx context.Context, url string) (benchSession, error) {
	n := b.next.Add(1)
	s := benchSession{address: fmt.Sprintf("bench-%s-%d@%s", b.run, n, benchServerName), secret: fmt.Sprintf("benchsecret%s%d", b.run, n)}
	got := b.sink.expect(s.address)
	var rt struct{ Sid string }
	if err := b.do(ctx, "POST", url+"/_matrix/identity/v2/validate/email/requestToken", map[string]any{
		"email": s.address, "client_secret": s.secret, "send_attempt": 1}, &rt); err != nil {
		return s, err
	}
	s.sid = rt.Sid
	var token string
	select {
	case token = <-got:
	case <-time.After(30 * time.Second):
		return s, fmt.Errorf("no mail for %s within 30s (does [email] send to -smtp?)", s.address)
	case <-ctx.Done():
		return s, ctx.Err()
	}
	return s, b.do(ctx, "POST", url+"/_matrix/identity/v2/validate/email/submitToken", map[string]any{
		"sid": s.sid, "client_secret": s.secret, "token": token}, nil)
}

// prepare validates n addresses with clients concurrent clients.
func (b *benchReplicas) prepare(ctx context.Context, n, clients int) ([]benchSession, error) {
	out := make([]benchSession, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				s, err := b.session(ctx, b.urls[i%len(b.urls)])
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				out[i] = s
			}
		})
	}
	wg.Wait()
	return out, firstErr
}

func (b *benchReplicas) bind(ctx context.Context, url string, s benchSession) error {
	return b.do(ctx, "POST", url+"/_matrix/identity/v2/3pid/bind", map[string]any{
		"sid": s.sid, "client_secret": s.secret, "mxid": "@bench:" + benchServerName}, nil)
}

// bindAll binds every session, the replicas in turn, and returns the
// latencies of the binds that succeeded.
func (b *benchReplicas) bindAll(ctx context.Context, sessions []benchSession, clients int) (lat []time.Duration, failed int64, el time.Duration) {
	var next, fails atomic.Int64
	per := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(sessions); i = int(next.Add(1)) - 1 {
				t0 := time.Now()
				if err := b.bind(ctx, b.urls[i%len(b.urls)], sessions[i]); err != nil {
					fails.Add(1)
					continue
				}
				per[c] = append(per[c], time.Since(t0))
			}
		})
	}
	wg.Wait()
	el = time.Since(start)
	for _, l := range per {
		lat = append(lat, l...)
	}
	slices.Sort(lat)
	return lat, fails.Load(), el
}

// propagation binds samples addresses on the first replica, one at a time,
// and times from each acknowledgement until a hashed lookup on the second
// finds it, while load clients validate and bind on the first replica.
func (b *benchReplicas) propagation(ctx context.Context, samples, load int) error {
	prepared, err := b.prepare(ctx, samples, load+1)
	if err != nil {
		return err
	}
	lctx, stop := context.WithCancel(ctx)
	var loadBinds atomic.Int64
	var wg sync.WaitGroup
	for range load {
		wg.Go(func() {
			for lctx.Err() == nil {
				s, err := b.session(lctx, b.urls[0])
				if err == nil && b.bind(lctx, b.urls[0], s) == nil {
					loadBinds.Add(1)
				}
			}
		})
	}
	start := time.Now()
	var lags []time.Duration
	pepper := ""
	for _, s := range prepared {
		if err := b.bind(ctx, b.urls[0], s); err != nil {
			stop()
			wg.Wait()
			return err
		}
		acked := time.Now()
		for {
			if pepper == "" {
				var hd struct {
					Pepper string `json:"lookup_pepper"`
				}
				if err := b.do(ctx, "GET", b.urls[1]+"/_matrix/identity/v2/hash_details", nil, &hd); err != nil {
					stop()
					wg.Wait()
					return err
				}
				pepper = hd.Pepper
			}
			h := threepid.Hash(s.address, "email", pepper)
			var res struct {
				Mappings map[string]string `json:"mappings"`
			}
			err := b.do(ctx, "POST", b.urls[1]+"/_matrix/identity/v2/lookup", map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{h}}, &res)
			if err != nil {
				pepper = "" // rotated meanwhile, most likely
			} else if res.Mappings[h] != "" {
				lags = append(lags, time.Since(acked))
				break
			}
			if time.Since(acked) > time.Minute {
				stop()
				wg.Wait()
				return fmt.Errorf("a bind on %s was not found on %s within a minute", b.urls[0], b.urls[1])
			}
		}
	}
	el := time.Since(start)
	stop()
	wg.Wait()
	slices.Sort(lags)
	fmt.Fprintf(b.out, "propagation %s -> %s under bind load (%d samples, %d load clients binding %s/s): p50 %s, p99 %s, max %s\n",
		b.urls[0], b.urls[1], len(lags), load, rate(float64(loadBinds.Load())/el.Seconds()), pctMS(lags, 0.50), pctMS(lags, 0.99), pctMS(lags, 1))
	return nil
}

// failover kills the leader and times until another replica leads.
func (b *benchReplicas) failover(ctx context.Context) error {
	leaderRE := regexp.MustCompile(`(?m)^mxid_replica_leader 1$`)
	infoRE := regexp.MustCompile(`(?m)^mxid_replica_info\{pid="(\d+)",replica="([^"]*)"\} 1$`)
	scrape := func(u string) string {
		req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
		resp, err := b.client.Do(req)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return string(raw)
	}
	leader := -1
	var pid int
	var name string
	for i, u := range b.metrics {
		body := scrape(u)
		if leaderRE.MatchString(body) {
			m := infoRE.FindStringSubmatch(body)
			if m == nil {
				return fmt.Errorf("%s: no mxid_replica_info", u)
			}
			leader, name = i, m[2]
			pid, _ = strconv.Atoi(m[1])
		}
	}
	if leader < 0 {
		return errors.New("failover: no replica reports mxid_replica_leader 1")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("failover: killing the leader %s (pid %d): %w", name, pid, err)
	}
	killed := time.Now()
	for time.Since(killed) < 2*time.Minute {
		for i, u := range b.metrics {
			if i != leader && leaderRE.MatchString(scrape(u)) {
				fmt.Fprintf(b.out, "failover: killed the leader %s (pid %d) with SIGKILL; %s leads after %s\n", name, pid, u, time.Since(killed).Round(time.Millisecond))
				return nil
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return errors.New("failover: no other replica leads 2 minutes after the leader was killed")
}

// pctMS is the p-th percentile of sorted durations, in milliseconds.
func pctMS(ds []time.Duration, p float64) string {
	if len(ds) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f ms", float64(ds[min(len(ds)-1, int(p*float64(len(ds))))].Microseconds())/1000)
}

// startBenchHomeserver is the bench user's homeserver: it vouches for the
// user's OpenID token and takes the onbind notices of its binds.
func startBenchHomeserver(addr string) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/_matrix/federation/v1/openid/userinfo":
			fmt.Fprintf(w, `{"sub":"@bench:%s"}`, benchServerName)
		case "/_matrix/federation/v1/3pid/onbind":
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "{}")
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(ln)
	return func() { srv.Close() }, nil
}

// smtpSink is an SMTP server that accepts every message and hands the
// validation token of each to whoever expects mail for its recipient.
type smtpSink struct {
	ln   net.Listener
	mu   sync.Mutex
	want map[string]chan string // recipient -> token
	wg   sync.WaitGroup
}

func startSMTPSink(addr string) (*smtpSink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &smtpSink{ln: ln, want: map[string]chan string{}}
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { s.serve(conn) })
		}
	})
	return s, nil
}

func (s *smtpSink) close() {
	s.ln.Close()
	s.wg.Wait()
}

// expect returns the channel that receives the token mailed to address.
func (s *smtpSink) expect(address string) <-chan string {
	ch := make(chan string, 1)
	s.mu.Lock()
	s.want[strings.ToLower(address)] = ch
	s.mu.Unlock()
	return ch
}

// serve speaks just enough SMTP for mxid's client: no TLS, no AUTH.
func (s *smtpSink) serve(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(conn)
	reply := func(line string) { io.WriteString(conn, line+"\r\n") }
	reply("220 mxid-bench ESMTP")
	var rcpt []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
			reply("250-mxid-bench")
			reply("250 8BITMIME")
		case strings.HasPrefix(cmd, "MAIL FROM:"), cmd == "RSET", cmd == "NOOP":
			reply("250 OK")
		case strings.HasPrefix(cmd, "RCPT TO:"):
			addr := strings.TrimSpace(line[len("RCPT TO:"):])
			rcpt = append(rcpt, strings.ToLower(strings.Trim(strings.Fields(addr + " ")[0], "<>")))
			reply("250 OK")
		case cmd == "DATA":
			reply("354 end with .")
			var data bytes.Buffer
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" || l == ".\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			reply("250 OK")
			if token := mailToken(data.Bytes()); token != "" {
				s.mu.Lock()
				for _, to := range rcpt {
					if ch, ok := s.want[to]; ok {
						delete(s.want, to)
						ch <- token
					}
				}
				s.mu.Unlock()
			}
			rcpt = nil
		case cmd == "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not implemented")
		}
	}
}

// mailToken finds the token in a validation mail: the token parameter of
// the submitToken link in its text part.
func mailToken(raw []byte) string {
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return ""
	}
	text := ""
	mt, params, _ := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(msg.Body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			if strings.HasPrefix(p.Header.Get("Content-Type"), "text/plain") {
				b, _ := io.ReadAll(p) // quoted-printable is decoded by multipart
				text = string(b)
				break
			}
		}
	} else {
		b, _ := io.ReadAll(msg.Body)
		text = string(b)
	}
	m := regexp.MustCompile(`submitToken\?(\S+)`).FindStringSubmatch(text)
	if m == nil {
		return ""
	}
	q, _ := url.ParseQuery(m[1])
	return q.Get("token")
}

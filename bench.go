package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mxid/lookup/threepid"
)

// cmdBenchLookup implements `mxid bench-lookup`: a load benchmark of
// POST /_matrix/identity/v2/lookup. By default it generates N bindings,
// imports them into a temporary data directory, starts `mxid serve` on it
// as a child process (so its memory is measured alone), and drives sha256
// lookups in batches and one address at a time, then again while the
// pepper rotates. With -url and -token it drives another server instead
// (sydent, another mxid) that holds the same generated bindings (-gen
// writes them as JSON lines).
func cmdBenchLookup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench-lookup")
	n := fs.Int("n", 1_000_000, "bindings to generate")
	dur := fs.Duration("duration", 10*time.Second, "length of each load phase")
	clients := fs.Int("clients", 4, "concurrent client goroutines")
	batch := fs.Int("batch", 1000, "addresses per batch request (half of them hits)")
	dataDir := fs.String("data", "", "data directory to use (default: a temporary one, removed afterwards)")
	target := fs.String("url", "", "drive this server instead of starting one (e.g. http://127.0.0.1:8090)")
	token := fs.String("token", "", "access token at -url")
	gen := fs.String("gen", "", "only write the generated bindings to this JSON-lines file and exit")
	genSydent := fs.String("gen-sydent", "", "only write the generated bindings as SQL for sydent's database and exit")
	logLevel := fs.String("log-level", "warn", "log level of the started server (info logs every request)")
	database := fs.String("database", "", "run the started server on this PostgreSQL database (an empty one, or one this benchmark filled) instead of a bbolt file")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *n < 2 || *batch < 1 || *clients < 1 {
		return usageError{errors.New("-n must be >= 2, -batch and -clients >= 1")}
	}
	if *gen != "" {
		return writeBenchBindings(*gen, *n)
	}
	if *genSydent != "" {
		return writeSydentSQL(*genSydent, *n)
	}
	b := &bench{n: *n, out: stdout, database: *database}
	if *target != "" {
		if *token == "" {
			return usageError{errors.New("-url needs -token")}
		}
		b.url, b.token = strings.TrimSuffix(*target, "/"), *token
	} else {
		stop, err := b.startServer(ctx, *dataDir, *logLevel, stderr)
		if err != nil {
			return err
		}
		defer stop()
	}
	b.client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *clients * 2, MaxConnsPerHost: *clients * 2}, Timeout: 30 * time.Second}
	if err := b.fetchPepper(); err != nil {
		return err
	}
	b.prepare(*batch)
	b.report("batches of %d sha256 addresses, %d clients, %v", *batch, *clients, *dur)
	b.run(ctx, *dur, *clients, true, nil)
	b.report("single sha256 addresses, %d clients, %v", *clients, *dur)
	b.run(ctx, *dur, *clients, false, nil)
	if b.cmd != nil {
		b.report("batches while the pepper rotates (SIGUSR1 after 1/3 of %v)", *dur)
		b.run(ctx, *dur, *clients, true, b.rotate)
	}
	return nil
}

const benchDomain = "bench.example.org"

func benchAddress(i int) string { return fmt.Sprintf("user%07d@%s", i, benchDomain) }
func benchMXID(i int) string    { return fmt.Sprintf("@user%07d:%s", i, benchDomain) }

// writeBenchBindings writes n generated bindings as JSON lines.
func writeBenchBindings(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		fmt.Fprintf(w, `{"medium":"email","address":%q,"mxid":%q,"ts":1700000000000}`+"\n", benchAddress(i), benchMXID(i))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeSydentSQL writes the generated bindings as SQL for sydent's SQLite
// database (its local and global association tables, lookup_hash left
// empty): sydent computes the hashes when it starts without a pepper in
// hashing_metadata, which the script deletes.
func writeSydentSQL(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fmt.Fprintln(w, "BEGIN;")
	for i := range n {
		a, m := benchAddress(i), benchMXID(i)
		fmt.Fprintf(w, "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore, notAfter) VALUES ('email', '%s', '%s', 1700000000000, 1700000000000, 4853600000000);\n", a, m)
		fmt.Fprintf(w, "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore, notAfter, originServer, originId, sgAssoc) VALUES ('email', '%s', '%s', 1700000000000, 1700000000000, 4853600000000, 'bench', %d, '{}');\n", a, m, i+1)
	}
	fmt.Fprintln(w, "DELETE FROM hashing_metadata;")
	fmt.Fprintln(w, "COMMIT;")
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type bench struct {
	n      int
	url    string
	token  string
	client *http.Client
	out    io.Writer
	cmd    *exec.Cmd
	// database is the PostgreSQL URL of the started server ("": bbolt).
	database string

	mu     sync.Mutex
	pepper string
	bodies [][]byte // batch request bodies for pepper
	single [][]byte
	hits   []int // expected hits per batch body

	rotation time.Duration
}

func (b *bench) report(format string, args ...any) { fmt.Fprintf(b.out, "== "+format+"\n", args...) }

// startServer imports the bindings into a data directory and starts
// `mxid serve` on a free port; stop ends it and cleans up.
func (b *bench) startServer(ctx context.Context, dir, logLevel string, stderr io.Writer) (stop func(), err error) {
	cleanup := func() {}
	if dir == "" {
		dir, err = os.MkdirTemp("", "mxid-bench-")
		if err != nil {
			return nil, err
		}
		cleanup = func() { os.RemoveAll(dir) }
	}
	fail := func(err error) (func(), error) { cleanup(); return nil, err }
	jsonl := filepath.Join(dir, "bindings.jsonl")
	dbCfg := DefaultConfig()
	dbCfg.DataDir = filepath.Join(dir, "data")
	dbCfg.Database.URL = b.database
	store, _, err := openBackend(ctx, dbCfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return fail(err)
	}
	if count, _ := store.CountBindings(); count < b.n {
		if err := writeBenchBindings(jsonl, b.n); err != nil {
			store.Close()
			return fail(err)
		}
		f, err := os.Open(jsonl)
		if err != nil {
			store.Close()
			return fail(err)
		}
		start := time.Now()
		res, err := importBindings(store, f, time.Now(), io.Discard)
		f.Close()
		if err != nil {
			store.Close()
			return fail(err)
		}
		fmt.Fprintf(b.out, "imported %d bindings in %.1fs (%s)\n", res.stored, time.Since(start).Seconds(), jsonl)
	}
	b.token = "bench" + strings.Repeat("x", 20) + fmt.Sprint(time.Now().UnixNano())
	if err := store.CreateAccountToken(b.token, "@bench:"+benchDomain, time.Now()); err != nil {
		store.Close()
		return fail(err)
	}
	store.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfgPath := filepath.Join(dir, "mxid.toml")
	cfg := fmt.Sprintf(`data_dir = %q
public_base_url = "http://%s"
[http]
listen = %q
[log]
level = %q
format = "json"
[lookup]
rate_per_account = { burst = 0, every = "1s" }
rate_per_ip = { burst = 0, every = "1s" }
rate_per_homeserver = { burst = 0, every = "1s" }
[database]
url = %q
`, filepath.Join(dir, "data"), addr, addr, logLevel, b.database)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return fail(err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	b.url = "http://" + addr
	cmd := exec.CommandContext(ctx, exe, "serve", "-config", cfgPath)
	cmd.Stderr = stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	b.cmd = cmd
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		cleanup()
	}
	for {
		resp, err := http.Get(b.url + "/_matrix/identity/versions")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(start) > 2*time.Minute || cmd.ProcessState != nil {
			stop()
			return nil, errors.New("the server did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	backend := "bbolt"
	if b.database != "" {
		backend = "PostgreSQL " + redactedURL(b.database)
	}
	fmt.Fprintf(b.out, "start-up to serving: %d ms with %d bindings on %s; RSS %s\n", time.Since(start).Milliseconds(), b.n, backend, b.rss())
	return stop, nil
}

// rss reads the server's resident memory (current and peak).
func (b *bench) rss() string {
	if b.cmd == nil {
		return "n/a"
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid))
	if err != nil {
		return "n/a"
	}
	f := map[string]string{}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			f[k] = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	mb := func(k string) string {
		var n int
		fmt.Sscan(f[k], &n)
		return fmt.Sprintf("%d MB", n/1024)
	}
	return fmt.Sprintf("%s (anon %s, file %s; peak %s)", mb("VmRSS"), mb("RssAnon"), mb("RssFile"), mb("VmHWM"))
}

func (b *bench) fetchPepper() error {
	req, _ := http.NewRequest("GET", b.url+"/_matrix/identity/v2/hash_details", nil)
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var hd struct {
		Pepper string `json:"lookup_pepper"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&hd); err != nil || resp.StatusCode != 200 || hd.Pepper == "" {
		return fmt.Errorf("hash_details: status %d: %v", resp.StatusCode, err)
	}
	b.mu.Lock()
	b.pepper = hd.Pepper
	b.mu.Unlock()
	return nil
}

// prepare builds request bodies ahead, so the client spends its time on
// HTTP, not hashing: 32 batch bodies (half hits) and 4,096 single ones.
func (b *bench) prepare(batch int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.pepper
	b.bodies, b.hits, b.single = nil, nil, nil
	k := 0
	for range 32 {
		addrs := make([]string, batch)
		hits := 0
		for i := range addrs {
			k++
			idx := (k * 7919) % b.n
			if i%2 == 0 {
				addrs[i] = threepid.Hash(benchAddress(idx), "email", p)
				hits++
			} else {
				addrs[i] = threepid.Hash(fmt.Sprintf("nobody%d@%s", k, benchDomain), "email", p)
			}
		}
		body, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": p, "addresses": addrs})
		b.bodies = append(b.bodies, body)
		b.hits = append(b.hits, hits)
	}
	for i := range 4096 {
		body, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": p, "addresses": []string{threepid.Hash(benchAddress((i*104729)%b.n), "email", p)}})
		b.single = append(b.single, body)
	}
}

// rotate signals the server to rotate its pepper and measures how long
// until hash_details shows a new one.
func (b *bench) rotate() {
	old := b.pepper
	start := time.Now()
	b.cmd.Process.Signal(syscall.SIGUSR1)
	for time.Since(start) < time.Minute {
		if b.fetchPepper() == nil && b.pepper != old {
			b.rotation = time.Since(start)
			fmt.Fprintf(b.out, "   pepper rotated in %d ms (until hash_details showed the new pepper), RSS %s\n", b.rotation.Milliseconds(), b.rss())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Fprintln(b.out, "   the pepper did not change within a minute")
}

// run drives the load for d with the given number of clients and prints
// the figures. during, if set, runs once after a third of d.
func (b *bench) run(ctx context.Context, d time.Duration, clients int, batched bool, during func()) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var reqs, addrs, failures, wrong atomic.Int64
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, 64<<10)
			for i := c; ctx.Err() == nil; i += clients {
				b.mu.Lock()
				var body []byte
				var want, n int
				if batched {
					body, want, n = b.bodies[i%len(b.bodies)], b.hits[i%len(b.bodies)], 2*b.hits[i%len(b.bodies)]
				} else {
					body, want, n = b.single[i%len(b.single)], 1, 1
				}
				b.mu.Unlock()
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, "POST", b.url+"/_matrix/identity/v2/lookup", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+b.token)
				req.Header.Set("Content-Type", "application/json")
				resp, err := b.client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failures.Add(1)
					}
					continue
				}
				buf = buf[:0]
				buf, err = readAllInto(buf, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					if ctx.Err() == nil {
						failures.Add(1)
					}
					continue
				}
				lat[c] = append(lat[c], time.Since(t0))
				reqs.Add(1)
				addrs.Add(int64(n))
				// Every value of "mappings" is a Matrix ID, and nothing else
				// in the answer starts with "@: counting `"@` works whatever
				// the server's JSON spacing (sydent writes `": "@`).
				if got := bytes.Count(buf, []byte(`"@`)); got != want {
					wrong.Add(1)
				}
			}
		}()
	}
	if during != nil {
		select {
		case <-time.After(d / 3):
			during()
		case <-ctx.Done():
		}
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	pct := func(p float64) string {
		if len(all) == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f ms", float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds())/1000)
	}
	fmt.Fprintf(b.out, "   %s addresses/s, %s requests/s (%d requests), p50 %s, p99 %s, failed %d, wrong answers %d, server RSS %s\n",
		rate(float64(addrs.Load())/el), rate(float64(reqs.Load())/el), reqs.Load(), pct(0.50), pct(0.99), failures.Load(), wrong.Load(), b.rss())
}

// rate prints a per-second figure with the precision it deserves: a slow
// server's fraction of a request per second is not 0.
func rate(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func readAllInto(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

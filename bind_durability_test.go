package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mxid/db"
	"mxid/mail/smtptest"
)

// TestServeChild is the server process of TestBindDurabilityAfterKill: it
// runs only when that test re-executes the test binary with
// MXID_TEST_CHILD_CONFIG set.
func TestServeChild(t *testing.T) {
	cfg := os.Getenv("MXID_TEST_CHILD_CONFIG")
	if cfg == "" {
		t.Skip("helper process for TestBindDurabilityAfterKill")
	}
	if err := run(context.Background(), []string{"serve", "-config", cfg}, os.Stdout, os.Stderr); err != nil {
		t.Fatal(err)
	}
}

// Every bind that was answered 200 survives a SIGKILL of the server: many
// concurrent binds against a real mxid process, killed mid-way, then the
// database reopened and read.
func TestBindDurabilityAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server process")
	}
	const users = 60
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	smtp := smtptest.Start(t, smtptest.Options{Mode: "plain"})

	// Accounts are created in the database before the server starts
	// (registration needs a homeserver and is tested elsewhere).
	store, err := db.Open(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	tokens := make([]string, users)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("durabilitytoken%03dxxxxxxxxxxxxxxxxxxxxx", i)
		if err := store.CreateAccountToken(tokens[i], fmt.Sprintf("@user%d:hs.test", i), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	store.Close()

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := "http://" + addr
	config := fmt.Sprintf(`server_name = "id.example.test"
public_base_url = %q
data_dir = %q
[http]
listen = %q
[log]
level = "warn"
[email]
mode = "plain"
host = "127.0.0.1"
port = %d
[ratelimit]
request_token = { burst = 1000, every = "1ms" }
email_address = { burst = 1000, every = "1ms" }
attempts = { burst = 100000, every = "1ms" }
`, base, dataDir, addr, smtp.Port)
	cfgPath := filepath.Join(dir, "mxid.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	var logs strings.Builder
	var logMu sync.Mutex
	cmd := exec.Command(os.Args[0], "-test.run=^TestServeChild$")
	cmd.Env = append(os.Environ(), "MXID_TEST_CHILD_CONFIG="+cfgPath)
	out := writerFunc(func(p []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return logs.Write(p) })
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	client := &http.Client{Timeout: 30 * time.Second}
	// The child logs at warn (no "serving" line): poll until it answers,
	// failing at once if it exits; the deadline only catches a hang.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get(base + "/_matrix/identity/v2")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			logMu.Lock()
			t.Fatalf("the server did not start within 2 minutes: %v\n%s", err, logs.String())
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			logMu.Lock()
			t.Fatalf("the server exited while starting: %v\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

	post := func(path, token string, body any) (int, []byte, error) {
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(string(b)))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		return resp.StatusCode, raw, err
	}

	// Validate one address per user.
	sids := make([]string, users)
	for i := range sids {
		status, raw, err := post("/_matrix/identity/v2/validate/email/requestToken", tokens[i], map[string]any{"email": fmt.Sprintf("user%d@example.org", i), "client_secret": "cs", "send_attempt": 1})
		var r struct{ SID string }
		if err != nil || status != 200 || json.Unmarshal(raw, &r) != nil {
			t.Fatalf("requestToken %d: %d %s %v", i, status, raw, err)
		}
		sids[i] = r.SID
	}
	linkRE := regexp.MustCompile(`https?://\S+/submitToken\?\S+`)
	for n := 1; n <= users; n++ {
		m := smtp.Wait(t, n)
		p, err := m.Parse()
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(linkRE.FindString(p.Text))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Get(u.String())
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("opening the link of mail %d: %v", n, err)
		}
		resp.Body.Close()
	}

	// Bind concurrently; kill -9 once a third have been answered.
	type ack struct{ address, mxid string }
	var mu sync.Mutex
	var acked []ack
	killed := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for i := 0; i < users; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mxid := fmt.Sprintf("@user%d:hs.test", i)
			status, raw, err := post("/_matrix/identity/v2/3pid/bind", tokens[i], map[string]any{"sid": sids[i], "client_secret": "cs", "mxid": mxid})
			if err != nil {
				return // killed before it answered
			}
			var assoc struct{ Address, MXID string }
			if status != 200 || json.Unmarshal(raw, &assoc) != nil || assoc.MXID != mxid {
				t.Errorf("bind %d: %d %s", i, status, raw)
				return
			}
			mu.Lock()
			acked = append(acked, ack{assoc.Address, assoc.MXID})
			n := len(acked)
			mu.Unlock()
			if n >= users/3 {
				once.Do(func() {
					cmd.Process.Signal(syscall.SIGKILL)
					close(killed)
				})
			}
		}()
	}
	wg.Wait()
	once.Do(func() { cmd.Process.Signal(syscall.SIGKILL); close(killed) })
	<-killed
	select {
	case <-exited:
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Fatal("the server did not die within a minute of SIGKILL")
	}
	exited <- nil // for the cleanup

	store, err = db.Open(dataDir)
	if err != nil {
		t.Fatalf("reopening after the kill: %v", err)
	}
	defer store.Close()
	for _, a := range acked {
		b, err := store.GetBinding("email", a.address)
		if err != nil || b.MXID != a.mxid {
			t.Errorf("acknowledged bind %s -> %s lost: %+v %v", a.address, a.mxid, b, err)
		}
	}
	n, _ := store.CountBindings()
	t.Logf("%d binds acknowledged before the kill, %d in the database after it", len(acked), n)
	if len(acked) < users/3 {
		t.Errorf("only %d binds acknowledged", len(acked))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"mxid/db"
)

// SIGHUP sent over and over from the start of a start-up with 300,000
// bindings (systemctl reload while mxid builds its index): the process
// lives, becomes ready, and stops cleanly on SIGTERM. A SIGUSR1 sent at the
// same time rotates the pepper once the index exists.
func TestSignalsDuringStartUp(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the mxid binary with 300,000 bindings")
	}
	const bindings = 300000
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	store, err := db.Open(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	batch := make([]db.Binding, 0, 10000)
	for i := range bindings {
		batch = append(batch, db.Binding{Medium: "email", Address: fmt.Sprintf("user%d@example.org", i), MXID: fmt.Sprintf("@user%d:hs.test", i), TS: 1, NotBefore: 1, NotAfter: 1 << 50})
		if len(batch) == cap(batch) {
			if _, err := store.PutBindings(batch, len(batch)); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	store.Close()
	port := freePort(t)
	cfgPath := writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n[http]\nlisten = \"127.0.0.1:%d\"\n", dataDir, port))
	versions := fmt.Sprintf("http://127.0.0.1:%d/_matrix/identity/versions", port)

	mxid := execMxid(t, "serve", "-config", cfgPath)
	start := time.Now()
	// The first log line comes after main caught the signals: from then
	// on, SIGHUP every millisecond until mxid answers. (Before main runs,
	// the Go runtime and package initialisation, no program can handle a
	// signal; see the README.)
	mxid.stderr.waitFor("\n")
	mxid.Signal(syscall.SIGUSR1)
	stop, stopped := make(chan struct{}), make(chan int)
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		sent := 0
		for {
			select {
			case <-stop:
				stopped <- sent
				return
			case <-tick.C:
				mxid.Signal(syscall.SIGHUP)
				sent++
			}
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, "mxid to answer", func() bool {
		if exitedNow(mxid) {
			close(stop)
			t.Fatalf("mxid ended during start-up: %v", mxid.result())
		}
		resp, err := client.Get(versions)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	ready := time.Since(start)
	close(stop)
	sent := <-stopped
	t.Logf("mxid answered %v after it started with %d bindings; %d SIGHUPs sent meanwhile", ready.Round(time.Millisecond), bindings, sent)

	if !mxid.stderr.waitFor("lookup pepper rotated") {
		<-mxid.exited
		t.Fatalf("mxid ended before it rotated the pepper asked for during start-up: %v", mxid.result())
	}
	// Ready, a SIGHUP reloads (tls mode off: there is nothing to reload).
	before := strings.Count(mxid.stderr.String(), "SIGHUP: reloading the TLS certificate")
	mxid.Signal(syscall.SIGHUP)
	if !mxid.stderr.waitUntil(func(log string) bool {
		return strings.Count(log, "SIGHUP: reloading the TLS certificate") > before
	}) {
		<-mxid.exited
		t.Fatalf("mxid ended before it reloaded: %v", mxid.result())
	}
	mxid.Signal(syscall.SIGTERM)
	<-mxid.exited
	e := mxid.result()
	if e.code != 0 || e.signal != 0 || e.crashed() {
		t.Fatalf("after SIGTERM: %v", e)
	}
	for _, want := range []string{
		"SIGHUP during start-up: the certificate is reloaded once TLS is set up",
		"SIGUSR1 during start-up: the pepper is rotated once the lookup index is built",
		"acting on the SIGUSR1 received during start-up",
		"msg=\"database checked\"",
		"msg=stopped",
	} {
		if !strings.Contains(e.stderr, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", e.stderr)
	}
}

// exitedNow says whether the process has ended, without waiting.
func exitedNow(r *running) bool {
	select {
	case <-r.exited:
		return true
	default:
		return false
	}
}

// A signal that comes before its part exists is logged once and acted on
// when the part registers; later ones act at once.
func TestSignalLoopActsOnceReady(t *testing.T) {
	hup, usr1 := make(chan os.Signal, 1), make(chan os.Signal, 1)
	var logs syncBuffer
	loop := startSignalLoop(t.Context(), opSignals{hup: hup, usr1: usr1}, slog.New(slog.NewTextHandler(&logs, nil)))
	defer loop.stop()
	hup <- syscall.SIGHUP
	logs.waitFor("SIGHUP during start-up")
	reloads := make(chan struct{}, 4)
	loop.ready(reloadTLS, func(context.Context) { reloads <- struct{}{} })
	<-reloads // the one that waited
	hup <- syscall.SIGHUP
	<-reloads
	if strings.Contains(logs.String(), "SIGUSR1") {
		t.Errorf("SIGUSR1 logged without being sent:\n%s", logs.String())
	}
	loop.stop()
	loop.ready(rotatePepper, func(context.Context) {}) // after stop: returns
}

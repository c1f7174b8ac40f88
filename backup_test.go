package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"mxid/db"
	"mxid/server"
)

// TestBackupWhileServing runs `mxid backup` against a serving mxid whose
// store takes a stream of new bindings: the backup comes through the admin
// socket, passes its check, and holds every binding committed before it
// started. With the server stopped, the same command reads the file.
func TestBackupWhileServing(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	cfgPath := filepath.Join(dir, "mxid.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf("data_dir = %q\n", dataDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	app, err := newApp(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	api, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := server.ListenAdmin(dataDir, slog.New(slog.DiscardHandler))
	if err != nil || admin == nil {
		t.Fatalf("admin socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- app.srv.ServeAll(ctx, server.Listeners{API: api, Admin: admin}) }()

	addr := func(i int64) string { return fmt.Sprintf("user%d@example.org", i) }
	var acked atomic.Int64
	stop := make(chan struct{})
	inSwing := make(chan struct{}) // closed once the writer has committed 300 (or has failed)
	var swing sync.Once
	var wg sync.WaitGroup
	wg.Go(func() {
		defer swing.Do(func() { close(inSwing) })
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := app.store.PutBinding(db.Binding{Medium: "email", Address: addr(i), MXID: "@u:example.org"}); err != nil {
				t.Error(err)
				return
			}
			acked.Store(i + 1)
			if i+1 == 300 {
				swing.Do(func() { close(inSwing) })
			}
		}
	})
	<-inSwing
	before := acked.Load()
	dest := filepath.Join(dir, "live.db")
	var out, errOut bytes.Buffer
	err = run(context.Background(), []string{"backup", "-config", cfgPath, dest}, &out, &errOut)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("backup while serving: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "from the running server") {
		t.Errorf("output: %s", out.String())
	}
	sum, err := db.VerifyBackup(dest)
	if err != nil {
		t.Fatal(err)
	}
	if int64(sum.Bindings) < before {
		t.Fatalf("backup holds %d bindings; %d were committed before it started", sum.Bindings, before)
	}
	restored := filepath.Join(dir, "restored")
	os.MkdirAll(restored, 0o700)
	data, _ := os.ReadFile(dest)
	os.WriteFile(filepath.Join(restored, db.FileName), data, 0o600)
	r, err := db.Open(restored)
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < before; i++ {
		if _, err := r.GetBinding("email", addr(i)); err != nil {
			t.Fatalf("binding %d, committed before the backup, is missing: %v", i, err)
		}
	}
	r.Close()
	if fi, _ := os.Stat(dest); fi.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %o, want 600", fi.Mode().Perm())
	}

	// An existing FILE is not replaced without -force.
	if err := run(context.Background(), []string{"backup", "-config", cfgPath, dest}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("backup over an existing file: %v", err)
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	app.close()
	if _, err := os.Stat(filepath.Join(dataDir, server.AdminSocketName)); !os.IsNotExist(err) {
		t.Errorf("admin socket left behind after shutdown: %v", err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"backup", "-config", cfgPath, "-force", dest}, &out, &errOut); err != nil {
		t.Fatalf("backup of a stopped server: %v", err)
	}
	if !strings.Contains(out.String(), "from the database file") {
		t.Errorf("output: %s", out.String())
	}
	if sum2, err := db.VerifyBackup(dest); err != nil || int64(sum2.Bindings) != acked.Load() {
		t.Errorf("offline backup: %+v %v, want %d bindings", sum2, err, acked.Load())
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "*.partial-*")); len(leftovers) > 0 {
		t.Errorf("partial files left: %v", leftovers)
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"mxid/db"
	"mxid/server"
	"mxid/server/signing"
)

// importedDataDir is a data directory holding n bindings imported with
// `mxid import` (the binary), and its config; serve would listen on a free
// port.
func importedDataDir(t *testing.T, n int) (cfgPath, dataDir string) {
	t.Helper()
	dir := t.TempDir()
	dataDir = filepath.Join(dir, "data")
	cfgPath = writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n[http]\nlisten = \"127.0.0.1:%d\"\n", dataDir, freePort(t)))
	var lines bytes.Buffer
	for i := range n {
		fmt.Fprintf(&lines, `{"medium":"email","address":"user%d@example.org","mxid":"@user%d:hs.test"}`+"\n", i, i)
	}
	file := writeFile(t, dir, "bindings.jsonl", lines.String())
	if e := runMxid(t, "import", "-config", cfgPath, file); e.code != 0 || !strings.Contains(e.stdout, fmt.Sprintf("%d bindings imported", n)) {
		t.Fatalf("import: %v", e)
	}
	return cfgPath, dataDir
}

// inUsePage is the first page from the middle of the database file on
// that holds live data (a leaf or branch page, not a free one).
func inUsePage(t *testing.T, path string) int {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	page := -1
	bdb.View(func(tx *bolt.Tx) error {
		pages := int(tx.Size() / int64(bdb.Info().PageSize))
		for id := pages / 2; id < pages && page < 0; id++ {
			if info, err := tx.Page(id); err == nil && info != nil && (info.Type == "leaf" || info.Type == "branch") {
				page = id
			}
		}
		return nil
	})
	if page < 0 {
		t.Fatal("no page in use in the second half of the file")
	}
	return page
}

// Each kind of damage gets its message and a non-zero exit from every
// command that opens the database, never a crash, and the file is left as
// it was for the operator to restore.
func TestDamagedDatabaseRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the mxid binary")
	}
	cfgPath, dataDir := importedDataDir(t, 20000)
	dbPath := filepath.Join(dataDir, db.FileName)
	good, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := signing.LoadOrCreateKey(filepath.Join(dataDir, signingKeyName)); err != nil {
		t.Fatal(err)
	}
	garbagePage := inUsePage(t, dbPath)
	one := writeFile(t, t.TempDir(), "one.jsonl", `{"medium":"email","address":"new@example.org","mxid":"@new:hs.test"}`+"\n")
	backupDir := t.TempDir()
	dest := filepath.Join(backupDir, "backup.db")

	cases := []struct {
		name   string
		damage func() []byte // writes the damaged file, returns its content
		want   []string
	}{
		{"truncated to half", func() []byte {
			return good[:len(good)/2]
		}, []string{dbPath + " is truncated (", fmt.Sprintf("(%d bytes, needs at least ", len(good)/2), "): restore it from a backup"}},
		{fmt.Sprintf("page %d overwritten with garbage", garbagePage), func() []byte {
			bad := bytes.Clone(good)
			rand.Read(bad[garbagePage*4096 : (garbagePage+1)*4096])
			return bad
		}, []string{dbPath + " is damaged (", "): restore it from a backup"}},
		{"empty beside signing.key", func() []byte {
			return nil
		}, []string{dbPath + " is empty (0 bytes)", "signing.key", "Restore mxid.db from a backup, or remove the empty file"}},
	}
	commands := [][]string{
		{"serve", "-config", cfgPath},
		{"import", "-config", cfgPath, one},
		{"backup", "-config", cfgPath, dest},
		{"check-db", "-config", cfgPath},
		{"check-config", "-config", cfgPath},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range commands {
				content := tc.damage()
				if err := os.WriteFile(dbPath, content, 0o600); err != nil {
					t.Fatal(err)
				}
				e := runMxid(t, args...)
				out := e.stdout + e.stderr
				if e.code == 0 || e.signal != 0 || e.crashed() {
					t.Errorf("mxid %s: want a refusal (non-zero exit, no crash), got %v", args[0], e)
				}
				for _, w := range tc.want {
					if !strings.Contains(out, w) {
						t.Errorf("mxid %s: output lacks %q:\n%s", args[0], w, out)
					}
				}
				if after, _ := os.ReadFile(dbPath); !bytes.Equal(after, content) {
					t.Errorf("mxid %s changed the damaged file (%d bytes, was %d)", args[0], len(after), len(content))
				}
			}
			if left, _ := os.ReadDir(backupDir); len(left) > 0 {
				t.Errorf("backup left files: %v", left)
			}
		})
	}
}

// An empty mxid.db with no signing key beside it (a first start that died
// creating the file) and a new data directory both start fresh.
func TestEmptyDatabaseWithoutKeyStartsFresh(t *testing.T) {
	for _, touch := range []bool{false, true} {
		dir := t.TempDir()
		if touch {
			os.WriteFile(filepath.Join(dir, db.FileName), nil, 0o600)
		}
		if err := refuseEmptyStore(dir); err != nil {
			t.Fatalf("touch=%v: %v", touch, err)
		}
		if err := probeStore(Config{DataDir: dir}); err != nil {
			t.Errorf("touch=%v: check-config: %v", touch, err)
		}
		store, err := openStore(dir, discardLog())
		if err != nil {
			t.Fatalf("touch=%v: %v", touch, err)
		}
		store.Close()
	}
}

// check-db reads every page, from the file when no server runs and through
// the admin socket while one does; it finds a page damaged under the
// running server.
func TestCheckDB(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the mxid binary")
	}
	cfgPath, dataDir := importedDataDir(t, 20000)
	dbPath := filepath.Join(dataDir, db.FileName)
	counts := "bindings           20000\n  sessions           0\n  accounts           0\n  invites            0\n  queued deliveries  0\n"
	e := runMxid(t, "check-db", "-config", cfgPath)
	if e.code != 0 || !strings.Contains(e.stdout, "OK:") || !strings.Contains(e.stdout, "checked by this command (no server running)") || !strings.Contains(e.stdout, counts) {
		t.Errorf("check-db of a good file: %v", e)
	}
	page := inUsePage(t, dbPath)

	cfg, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	app, err := newApp(cfg, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := server.ListenAdmin(dataDir, discardLog())
	if err != nil || admin == nil {
		t.Fatalf("admin socket: %v", err)
	}
	api, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- app.srv.ServeAll(ctx, server.Listeners{API: api, Admin: admin}) }()
	defer func() { cancel(); <-served; app.close() }()

	e = runMxid(t, "check-db", "-config", cfgPath)
	if e.code != 0 || !strings.Contains(e.stdout, "checked by the running server") || !strings.Contains(e.stdout, counts) {
		t.Errorf("check-db while serving: %v", e)
	}
	// Garbage written into the file under the server (its map is shared).
	f, err := os.OpenFile(dbPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 4096)
	rand.Read(garbage)
	f.WriteAt(garbage, int64(page)*4096)
	f.Close()
	e = runMxid(t, "check-db", "-config", cfgPath)
	if e.code == 0 || e.signal != 0 || e.crashed() || !strings.Contains(e.stderr, dbPath+" is damaged (") {
		t.Errorf("check-db of a page damaged while serving: %v", e)
	}
}

// A backup that is interrupted (SIGINT, SIGTERM, SIGHUP from a closed
// terminal) or fails removes its temporary file. The server end is a slow
// admin socket that sends part of the copy and then waits, so the signal
// comes while the copy is being written.
func TestBackupInterruptedLeavesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the mxid binary")
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			os.MkdirAll(dataDir, 0o700)
			cfgPath := writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n", dataDir))
			ln, err := net.Listen("unix", filepath.Join(dataDir, server.AdminSocketName))
			if err != nil {
				t.Fatal(err)
			}
			started, release := make(chan struct{}), make(chan struct{})
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100000000")
				w.Write(make([]byte, 1<<20))
				w.(http.Flusher).Flush()
				close(started)
				select {
				case <-release:
				case <-r.Context().Done():
				}
			})}
			go srv.Serve(ln)
			defer srv.Close()
			defer close(release)

			backupDir := filepath.Join(dir, "backups")
			os.MkdirAll(backupDir, 0o700)
			cmd := execMxid(t, "backup", "-config", cfgPath, filepath.Join(backupDir, "b.db"))
			select {
			case <-started:
			case <-cmd.exited:
				t.Fatalf("backup ended before the copy started: %v", cmd.result())
			}
			waitFor(t, "the partial file", func() bool {
				left, _ := os.ReadDir(backupDir)
				return len(left) == 1 && strings.Contains(left[0].Name(), ".partial-")
			})
			cmd.Process.Signal(sig)
			<-cmd.exited
			e := cmd.result()
			if e.code == 0 || e.signal != 0 || e.crashed() || !strings.Contains(e.stderr, "backup failed") {
				t.Errorf("interrupted backup: %v", e)
			}
			if left, _ := os.ReadDir(backupDir); len(left) > 0 {
				t.Errorf("an interrupted backup left %v", left)
			}
		})
	}
}

// Without a server the copy comes from the file; once the context is done
// (the signal), it stops at its next write instead of running to the end.
func TestBackupOfflineStopsWhenInterrupted(t *testing.T) {
	dir := t.TempDir()
	store, err := db.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]db.Binding, 5000)
	for i := range bs {
		bs[i] = db.Binding{Medium: "email", Address: fmt.Sprintf("u%d@example.org", i), MXID: "@u:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}
	}
	store.PutBindings(bs, 5000)
	store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var written int64
	interruptAfterFirst := writerFunc(func(p []byte) (int, error) { written += int64(len(p)); cancel(); return len(p), nil })
	n, err := db.BackupOffline(dir, ctxWriter{ctx, interruptAfterFirst})
	fi, _ := os.Stat(filepath.Join(dir, db.FileName))
	if err == nil || !strings.Contains(err.Error(), "interrupted") || written >= fi.Size()/2 { // bbolt does not wrap the error
		t.Errorf("interrupted offline copy: %v after %d of %d bytes (%d written)", err, n, fi.Size(), written)
	}

	// The command removes its file when the copy fails, whichever way.
	cfgPath := writeFile(t, t.TempDir(), "mxid.toml", fmt.Sprintf("data_dir = %q\n", dir))
	dest := filepath.Join(t.TempDir(), "b.db")
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"backup", "-config", cfgPath, dest}, &out, &errOut); err == nil {
		t.Error("a backup with its context done succeeded")
	}
	if left, _ := filepath.Glob(dest + "*"); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// With [database] url set, the store is PostgreSQL and serve never opens a
// mxid.db in data_dir: check-config does not judge one either (here an
// empty file beside signing.key, which it refuses on bbolt).
func TestCheckConfigIgnoresBboltFileOnPostgres(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	must(t, os.MkdirAll(dataDir, 0o700))
	must(t, os.WriteFile(filepath.Join(dataDir, signingKeyName), []byte("left from the bbolt days"), 0o600))
	must(t, os.WriteFile(filepath.Join(dataDir, db.FileName), nil, 0o600))
	bbolt := writeFile(t, dir, "bbolt.toml", fmt.Sprintf("data_dir = %q\n", dataDir))
	if out, err := runOut("check-config", "-config", bbolt); err == nil || !strings.Contains(out, "is empty (0 bytes)") {
		t.Errorf("check-config on bbolt with an emptied mxid.db: %v\n%s", err, out)
	}
	postgres := writeFile(t, dir, "pg.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl = \"postgres://mxid@db.example.org/mxid\"\n", dataDir))
	if out, err := runOut("check-config", "-config", postgres); err != nil || !strings.Contains(out, "configuration OK") {
		t.Errorf("check-config on PostgreSQL with a mxid.db left in data_dir: %v\n%s", err, out)
	}
}

// check-config reports a damaged database as one more problem, and only
// looks at the meta pages (no page walk) so it also works beside a server.
func TestCheckConfigReportsDamagedDatabase(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	cfgPath := writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\nserver_nam = \"x\"\n", dataDir))
	store, err := db.Open(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	store.Close()
	os.Truncate(filepath.Join(dataDir, db.FileName), 8192)
	var out, errOut bytes.Buffer
	err = run(context.Background(), []string{"check-config", "-config", cfgPath}, &out, &errOut)
	if err == nil || !strings.Contains(errOut.String(), "mxid.db is truncated (8192 bytes, needs at least") {
		t.Errorf("check-config: %v\n%s", err, errOut.String())
	}
	if n := strings.Count(errOut.String(), "\n  "+cfgPath); n < 2 {
		t.Errorf("want the config problem and the database problem, got %d:\n%s", n, errOut.String())
	}
}

// running is the binary started in the background.
type running struct {
	*os.Process
	exited         chan struct{}
	stdout, stderr *syncBuffer
	state          *os.ProcessState
}

func (r *running) result() exited {
	e := exited{stdout: r.stdout.String(), stderr: r.stderr.String(), code: r.state.ExitCode()}
	if ws, ok := r.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.signal = ws.Signal()
	}
	return e
}

// execMxid starts the binary; it is killed at the end of the test if it
// still runs.
func execMxid(t *testing.T, args ...string) *running {
	t.Helper()
	r := &running{exited: make(chan struct{}), stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	var attr os.ProcAttr
	stdoutR, stdoutW, _ := os.Pipe()
	stderrR, stderrW, _ := os.Pipe()
	attr.Files = []*os.File{nil, stdoutW, stderrW}
	p, err := os.StartProcess(mxidBinary(t), append([]string{"mxid"}, args...), &attr)
	stdoutW.Close()
	stderrW.Close()
	if err != nil {
		t.Fatal(err)
	}
	r.Process = p
	copied := make(chan struct{}, 2)
	go func() { io.Copy(r.stdout, stdoutR); r.stdout.close(); copied <- struct{}{} }()
	go func() { io.Copy(r.stderr, stderrR); r.stderr.close(); copied <- struct{}{} }()
	go func() {
		r.state, _ = p.Wait()
		<-copied
		<-copied
		close(r.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-r.exited:
		default:
			p.Kill()
			<-r.exited
			t.Logf("mxid %s was still running:\n%s", strings.Join(args, " "), r.stderr.String())
		}
	})
	return r
}

// waitFor polls cond until it holds, failing after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 2 minutes for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

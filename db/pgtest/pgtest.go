// Package pgtest runs a throw-away PostgreSQL for tests (the Go port of
// shared/recipes/postgres-test.sh): Debian's `postgresql` package, the newest
// /usr/lib/postgresql/*/bin, a cluster made by initdb in a temporary
// directory (as the `postgres` user when the tests run as root), trust
// authentication for the user "mxid", listening on 127.0.0.1 on a free port
// and on a socket in that directory, with fsync on.
//
// One server serves a whole test binary: New hands each test a fresh empty
// database (CREATE DATABASE t_N), so tests are isolated and can run in
// parallel. A package using New calls Main from its TestMain, which stops
// the server (immediate shutdown) and removes its directory after the
// tests. The server is also started with a parent-death signal, so a test
// binary that is killed or panics takes it along: `go test ./...` leaves
// no postgres behind. Outage tests use a server of their own (Start), which
// they can Stop and Start again with its data.
//
// Without the binaries a test is skipped, or fails when CI=true. It is test
// support: only _test.go files import it. It imports only the standard
// library (psql and pg_isready do the talking, so pgx stays in db/pg).
package pgtest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Server is one running PostgreSQL cluster.
type Server struct {
	dir  string // data/, the socket, server.log
	bin  string // PostgreSQL's bin directory
	port int
	cred *syscall.Credential // whom the server runs as; nil: as the tests

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the postmaster has exited

	dbs atomic.Int64
}

// The test binary's shared server.
var shared struct {
	main bool // Main was called
	once sync.Once
	srv  *Server
	err  error
}

// Main runs the tests of a package that uses New, then stops the shared
// server and removes its directory. Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain with cleanup of its own: it runs the tests,
// stops the shared server and returns the exit code.
func Run(m *testing.M) int {
	shared.main = true
	code := m.Run()
	if shared.srv != nil {
		shared.srv.remove()
	}
	return code
}

// New returns the URL of a new, empty database on the test binary's shared
// server, starting the server on first use; the database is dropped when
// the test ends.
func New(t testing.TB) string {
	t.Helper()
	bin := binDir(t)
	if !shared.main {
		t.Fatal("pgtest.New needs pgtest.Main(m) in the package's TestMain (it stops the server)")
	}
	shared.once.Do(func() { shared.srv, shared.err = start(bin) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv.NewDatabase(t)
}

// Start starts a server for this test alone (for outage tests: Stop, Start),
// removed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := start(binDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.remove)
	return s
}

// binDir finds the newest PostgreSQL server binaries, or skips the test
// (fails it when CI=true).
func binDir(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return version(a) - version(b) })
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "postgres")); err == nil {
			return dirs[i]
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("PostgreSQL is required in CI: no /usr/lib/postgresql/*/bin/postgres (apt-get install postgresql)")
	}
	t.Skip("PostgreSQL not installed (apt-get install postgresql)")
	return ""
}

// version is the major version in /usr/lib/postgresql/VERSION/bin.
func version(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// start makes a cluster in a new temporary directory and starts it.
func start(bin string) (*Server, error) {
	s := &Server{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgtest runs as root and needs the postgres user (apt-get install postgresql): %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir: the postgres user must own it, and the shared server
	// outlives any one test.
	dir, err := os.MkdirTemp("", "mxid-pgtest-")
	if err != nil {
		return nil, err
	}
	s.dir = dir
	if s.cred != nil {
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	initdb := s.command("initdb", "-D", filepath.Join(dir, "data"), "-U", "mxid", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	// A free port can be taken between our probe and the server's bind:
	// try again with another.
	for attempt := 0; ; attempt++ {
		s.port, err = freePort()
		if err == nil {
			err = s.run()
		}
		if err == nil || attempt == 4 || !errors.Is(err, errAddrInUse) {
			break
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

var errAddrInUse = errors.New("address in use")

// freePort picks a free port below Linux's ephemeral range (32768–60999),
// which every outgoing connection draws from: there, a connection could
// take the port while an outage test has the server stopped, and Start
// could not bind it again (lookup/slapdtest.FreePort says more).
func freePort() (int, error) {
	for range 1000 {
		port := 20000 + rand.IntN(32768-20000)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port in 127.0.0.1:20000-32767")
}

// command runs one of PostgreSQL's programs as the server's user.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// run starts the postmaster on s.port and returns once it accepts
// connections.
func (s *Server) run() error {
	logPath := filepath.Join(s.dir, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	if s.cred != nil {
		os.Chown(logPath, int(s.cred.Uid), int(s.cred.Gid))
	}
	cmd := s.command("postgres", "-D", filepath.Join(s.dir, "data"), "-h", "127.0.0.1", "-p", strconv.Itoa(s.port),
		"-k", s.dir, "-c", "fsync=on", "-c", "max_connections=300", "-c", "logging_collector=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Killed with the test binary: SIGQUIT is PostgreSQL's immediate
	// shutdown (what pg_ctl stop -m immediate sends).
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		// The parent-death signal follows the thread that started the
		// process: keep this one alive, locked, until the server exits.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ready := s.command("pg_isready", "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", "mxid", "-d", "postgres", "-t", "5")
		if ready.Run() == nil {
			return nil
		}
		select {
		case <-done:
			logText, _ := os.ReadFile(logPath)
			if strings.Contains(string(logText), "Address already in use") {
				return fmt.Errorf("port %d: %w", s.port, errAddrInUse)
			}
			return fmt.Errorf("postgres exited while starting:\n%s", logText)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			logText, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres did not accept connections within 60s:\n%s", logText)
		}
	}
}

// URL is the connection URL of database name.
func (s *Server) URL(name string) string {
	return fmt.Sprintf("postgres://mxid@127.0.0.1:%d/%s?sslmode=disable", s.port, name)
}

// NewDatabase creates an empty database and returns its URL; it is dropped
// when the test ends (after the cleanups registered later, such as closing
// the stores using it).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t_%d", s.dbs.Add(1))
	if err := s.SQL("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.SQL("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil && s.Running() {
			t.Logf("pgtest: %v", err)
		}
	})
	return s.URL(name)
}

// SQL runs statements on the server's "postgres" database with psql.
func (s *Server) SQL(sql string) error { return s.SQLOn("postgres", sql) }

// SQLOn runs statements on database name with psql.
func (s *Server) SQLOn(name, sql string) error { return psql(s.bin, s.URL(name), sql) }

// Exec runs statements on the database at url with psql, for tests that set
// up what a store would refuse to write.
func Exec(t testing.TB, url, sql string) {
	t.Helper()
	if err := psql(binDir(t), url, sql); err != nil {
		t.Fatal(err)
	}
}

// Dump is every row of every table of the database at url as text: what
// pg_dump --data-only writes (COPY blocks; bytea columns in hex). A test
// that must prove a value is nowhere in the database searches it.
func Dump(t testing.TB, url string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir(t), "pg_dump"), "--data-only", "--no-owner", "--no-privileges", "-d", url).Output()
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	return string(out)
}

func psql(bin, url, sql string) error {
	cmd := exec.Command(filepath.Join(bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("psql %q: %v\n%s", sql, err, out)
	}
	return nil
}

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Stop shuts the server down at once (immediate mode, as after a crash:
// committed data survives through the WAL) and waits for it to exit. The
// data stays for Start.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Start starts the server again on the same port with its data, and
// returns once it accepts connections.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if s.Running() {
		return
	}
	if err := s.run(); err != nil {
		t.Fatal(err)
	}
}

// remove stops the server and deletes its directory.
func (s *Server) remove() {
	s.Stop()
	os.RemoveAll(s.dir)
}

package server

// The admin socket: a unix socket in data_dir (mode 0600) for operations a
// local administrator runs against the live server: `mxid backup` and `mxid
// check-db` (bbolt locks the database file, so no second process can read it
// while mxid serves). It is never a network listener.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"mxid/db"
)

// AdminSocketName is the admin socket's file name in the data directory.
const AdminSocketName = "admin.sock"

// maxUnixPath is the longest path a unix socket can have on Linux.
const maxUnixPath = 107

// ListenAdmin opens the admin socket in dataDir. The caller holds the
// database lock, so a socket file left by a crashed mxid is stale and is
// replaced. A data_dir path too long for a socket is logged and skipped
// (nil listener): backups then need the server stopped.
func ListenAdmin(dataDir string, log *slog.Logger) (net.Listener, error) {
	path := filepath.Join(dataDir, AdminSocketName)
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if len(path) > maxUnixPath {
		log.Warn("data_dir path too long for the admin socket: mxid backup needs the server stopped", "path", path)
		return nil, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	log.Info("admin socket (mxid backup while serving)", "path", path)
	return ln, nil
}

// adminServer serves the admin routes; no write deadline, since a backup
// of a large database takes as long as it takes.
func (s *Server) adminServer() *http.Server {
	mux := http.NewServeMux()
	s.adminRoutes(mux)
	srv := s.HTTPServer()
	srv.Handler = mux
	srv.WriteTimeout = 0
	return srv
}

// getBackup streams a consistent copy of the database (GET /backup on the
// admin socket).
func (s *Server) getBackup(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	bs, ok := s.store.(interface {
		WriteBackup(w io.Writer, announce func(size int64)) (int64, error)
	})
	if !ok {
		http.Error(w, "this database is not a file mxid can copy: back it up with its own tools (pg_dump)", http.StatusNotImplemented)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	n, err := bs.WriteBackup(w, func(size int64) {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	})
	if err != nil {
		s.log.Error("backup failed while streaming", "bytes", n, "err", err)
		return
	}
	s.log.Info("backup streamed", "bytes", n, "duration_ms", time.Since(start).Milliseconds())
}

// getCheck runs bbolt's consistency check over every page of the live
// database and answers the report as JSON (GET /check on the admin
// socket): problems found are in the report; a check that could not run
// answers 500 with the reason.
func (s *Server) getCheck(w http.ResponseWriter, r *http.Request) {
	cs, ok := s.store.(interface{ Check() (db.Report, error) })
	if !ok {
		http.Error(w, "this database cannot be checked by mxid", http.StatusNotImplemented)
		return
	}
	report, err := cs.Check()
	if err != nil {
		s.log.Error("database check failed to run", "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if report.ProblemCount > 0 {
		s.log.Error("database check found problems", "err", report.Err())
	} else {
		s.log.Info("database checked", "bytes", report.Size, "bindings", report.Bindings, "duration_ms", report.DurationMS)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(report)
}

package server

// The admin socket: a unix socket in data_dir (mode 0600, so only the
// user mxid runs as, and root, can connect) for operations a local
// administrator runs against the live server: `mxid backup` and `mxid
// check-db` (bbolt locks the database file, so no second process can read it
// while mxid serves) and `mxid admin` (admin_actions.go: JSON in, JSON out).
// It is never a network listener. Nothing it serves is in the request log:
// its queries and answers name addresses.

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
		log.Warn("data_dir path too long for the admin socket: mxid admin (on bbolt) and mxid backup need the server stopped", "path", path)
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
	log.Info("admin socket (mxid admin, backup and check-db while serving)", "path", path)
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

// adminFunc is an admin action over HTTP: its answer, or an error.
type adminFunc func(r *http.Request) (any, error)

// adminJSON serves an admin action: 200 with the answer as JSON, or the
// error as {"errcode", "error"} with its status. The socket is the
// operator's, so the cause of a 5xx is in the message too.
func (s *Server) adminJSON(fn adminFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := fn(r)
		if err != nil {
			e := asError(err)
			msg := e.Message
			if e.Status >= 500 && e.Cause != nil {
				msg += ": " + e.Cause.Error()
				s.log.Error("admin action failed", "path", r.URL.Path, "err", e.Cause)
			}
			writeJSON(w, e.Status, map[string]string{"errcode": e.Code, "error": msg})
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// adminParam reads a request's one string parameter: from a POST's JSON
// body, or a GET's query.
func (s *Server) adminParam(r *http.Request, name string, required bool) (string, error) {
	if r.Method == http.MethodGet {
		v := r.URL.Query().Get(name)
		if v == "" && required {
			return "", errMissing(name)
		}
		return v, nil
	}
	body, err := s.readObject(r, false)
	if err != nil {
		return "", err
	}
	return body.str(name, required)
}

// adminJobID reads a POST's {"id": N}.
func (s *Server) adminJobID(r *http.Request) (uint64, error) {
	body, err := s.readObject(r, false)
	if err != nil {
		return 0, err
	}
	id, _, err := body.integer("id", true, false)
	if err != nil {
		return 0, err
	}
	if id <= 0 {
		return 0, errInvalid("id", "must be a positive integer")
	}
	return uint64(id), nil
}

func (s *Server) adminShow(r *http.Request) (any, error) {
	address, err := s.adminParam(r, "address", true)
	if err != nil {
		return nil, err
	}
	return s.admin.Show(address)
}

func (s *Server) adminUnbind(r *http.Request) (any, error) {
	address, err := s.adminParam(r, "address", true)
	if err != nil {
		return nil, err
	}
	return s.admin.Unbind(address)
}

func (s *Server) adminErase(r *http.Request) (any, error) {
	subject, err := s.adminParam(r, "subject", true)
	if err != nil {
		return nil, err
	}
	return s.admin.Erase(r.Context(), subject)
}

func (s *Server) adminInvites(r *http.Request) (any, error) {
	address, err := s.adminParam(r, "address", false)
	if err != nil {
		return nil, err
	}
	return s.admin.Invites(address)
}

func (s *Server) adminQueue(*http.Request) (any, error) { return s.admin.Queue() }

func (s *Server) adminQueueRetry(r *http.Request) (any, error) {
	id, err := s.adminJobID(r)
	if err != nil {
		return nil, err
	}
	return s.admin.RetryJob(id)
}

func (s *Server) adminQueueDrop(r *http.Request) (any, error) {
	id, err := s.adminJobID(r)
	if err != nil {
		return nil, err
	}
	return s.admin.DropJob(id)
}

func (s *Server) adminStats(*http.Request) (any, error) { return s.admin.Stats() }

func (s *Server) adminAudit(r *http.Request) (any, error) {
	var since int64
	if v := r.URL.Query().Get("since"); v != "" {
		var err error
		if since, err = strconv.ParseInt(v, 10, 64); err != nil || since < 0 {
			return nil, errInvalid("since", "must be Unix milliseconds")
		}
	}
	return s.admin.Audit(since, r.URL.Query().Get("address"))
}

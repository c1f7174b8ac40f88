package pg

import (
	"context"
	"errors"
	"hash/fnv"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// TLS storage: what certmagic keeps for tls.mode = "acme" (the ACME account,
// certificates, their keys and metadata, challenge tokens), in the
// tls_storage table, so that every replica serves one certificate obtained
// once with one account, and any replica answers a challenge another one
// started. Keys are slash-separated paths; a "directory" is a prefix of
// other keys ("a" is one of "a/b", not of "ab"). server/tls.go adapts these
// methods to certmagic's Storage interface; this package knows nothing of
// certmagic.
//
// Locks (CertLock) are PostgreSQL session advisory locks, each held on a
// connection of its own taken out of the pool: a replica that dies, or
// loses its connection, releases its locks at once, so no lock goes stale.
// A replica whose connection breaks while it holds a lock is not told; it
// goes on with work another replica may then also start. certmagic
// tolerates that (the CA answers a duplicate order with the same or a
// second certificate).

// Advisory locks of certmagic's names use their own class in the
// two-integer form: a 32-bit hash of the name. A collision only makes two
// names wait for each other.
const lockClassTLS = 0x6d787473 // "mxts"

// certLockPoll is how often CertLock tries again while another holds the
// lock (certmagic's file storage polls every second too).
const certLockPoll = time.Second

// certLocks are the locks this handle holds: name -> its connection.
type certLocks struct {
	mu   sync.Mutex
	held map[string]*pgx.Conn
}

// callCtx bounds a call made under a caller's context by the statement
// timeout too.
func (s *Store) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.StatementTimeout)
}

// CertPut stores value at key, replacing what was there.
func (s *Store) CertPut(ctx context.Context, key string, value []byte) error {
	if err := checkStorable("TLS storage key", key); err != nil {
		return err
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `INSERT INTO tls_storage (key, value, modified_ms)
		VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, modified_ms = excluded.modified_ms`, key, value)
	return classify(err)
}

// CertLoad returns the value at key, or db.ErrNotFound.
func (s *Store) CertLoad(ctx context.Context, key string) ([]byte, error) {
	if !storable(key) {
		return nil, db.ErrNotFound
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	var value []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM tls_storage WHERE key = $1", key).Scan(&value)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, db.ErrNotFound
	}
	return value, classify(err)
}

// under is the SQL condition "key is key $n or under it", bytewise: the
// keys under "a" sort from "a/" up to (not including) "a0" ('0' follows
// '/'). The root ("") is everything.
const under = `(key = $1 OR (key >= $1 || '/' AND key < $1 || '0') OR $1 = '')`

// CertDelete deletes key and every key under it. Deleting what is not
// there is not an error.
func (s *Store) CertDelete(ctx context.Context, key string) error {
	if !storable(key) {
		return nil
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, "DELETE FROM tls_storage WHERE "+under, key)
	return classify(err)
}

// keysUnder are the stored keys equal to or under prefix, sorted.
func (s *Store) keysUnder(ctx context.Context, prefix string) ([]string, error) {
	if !storable(prefix) {
		return nil, nil
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, "SELECT key FROM tls_storage WHERE "+under+" ORDER BY key", prefix)
	if err != nil {
		return nil, classify(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return keys, classify(err)
}

// CertList lists what is under prefix, as full keys: its children (files
// and directories) or, recursive, everything below it, directories
// included. A file has nothing under it (an empty list); a prefix with
// nothing stored is db.ErrNotFound.
func (s *Store) CertList(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	keys, err := s.keysUnder(ctx, prefix)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, db.ErrNotFound
	}
	base := prefix + "/"
	if prefix == "" {
		base = ""
	}
	seen := map[string]bool{}
	var out []string
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, base)
		if !ok || k == prefix {
			continue
		}
		parts := strings.Split(rest, "/")
		if !recursive {
			parts = parts[:1]
		}
		for i := range parts {
			add(base + strings.Join(parts[:i+1], "/"))
		}
	}
	sort.Strings(out)
	return out, nil
}

// CertStat describes key: a file (terminal, with its size and when it was
// stored) or a directory (a prefix of stored keys); db.ErrNotFound when it
// is neither.
func (s *Store) CertStat(ctx context.Context, key string) (size, modifiedMS int64, terminal bool, err error) {
	if !storable(key) {
		return 0, 0, false, db.ErrNotFound
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	err = s.pool.QueryRow(ctx, "SELECT length(value), modified_ms FROM tls_storage WHERE key = $1", key).Scan(&size, &modifiedMS)
	if err == nil {
		return size, modifiedMS, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, false, classify(err)
	}
	var dir bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM tls_storage WHERE "+under+" AND key <> $1)", key).Scan(&dir); err != nil {
		return 0, 0, false, classify(err)
	}
	if !dir {
		return 0, 0, false, db.ErrNotFound
	}
	return 0, 0, false, nil
}

func certLockID(name string) int32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return int32(h.Sum32())
}

// CertLock takes the lock name, waiting (polling every certLockPoll) while
// another handle, in this process or another, holds it, until ctx ends.
// It is released by CertUnlock, by Close, or when the holder's connection
// ends.
func (s *Store) CertLock(ctx context.Context, name string) error {
	for {
		ok, err := s.tryCertLock(ctx, name)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(certLockPoll):
		}
	}
}

func (s *Store) tryCertLock(ctx context.Context, name string) (bool, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return false, classify(err)
	}
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", lockClassTLS, certLockID(name)).Scan(&got); err != nil || !got {
		conn.Release()
		return false, classify(err)
	}
	// The lock lives as long as this connection: keep it out of the pool.
	held := conn.Hijack()
	s.certLocks.mu.Lock()
	defer s.certLocks.mu.Unlock()
	if s.certLocks.held == nil {
		s.certLocks.held = map[string]*pgx.Conn{}
	}
	s.certLocks.held[name] = held
	return true, nil
}

// CertUnlock releases the lock name taken by this handle's CertLock (by
// closing its connection, which releases it even when PostgreSQL cannot be
// told).
func (s *Store) CertUnlock(ctx context.Context, name string) error {
	s.certLocks.mu.Lock()
	conn := s.certLocks.held[name]
	delete(s.certLocks.held, name)
	s.certLocks.mu.Unlock()
	if conn == nil {
		return errors.New("TLS storage: unlocking " + name + ", which this replica does not hold")
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	return conn.Close(ctx)
}

// closeCertLocks releases every lock this handle holds (Close).
func (s *Store) closeCertLocks() {
	s.certLocks.mu.Lock()
	defer s.certLocks.mu.Unlock()
	for name, conn := range s.certLocks.held {
		ctx, cancel := s.call()
		conn.Close(ctx)
		cancel()
		delete(s.certLocks.held, name)
	}
}

package pg

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// keepalive is how both ends of a replica's own connections (the change
// feed, the leader's lock) probe a silent peer: after 5 s of silence, every
// 5 s, 3 times, so a peer gone without closing is noticed in about 20 s.
var keepalive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3}

// dedicated opens a connection outside the pool, with keepalives both ways:
// the client's socket option, and PostgreSQL's tcp_keepalives_* so that
// the server ends the session (and releases its locks) when the replica's
// host vanished.
func (s *Store) dedicated(ctx context.Context) (*pgx.Conn, error) {
	cfg := s.conn.Copy()
	dialer := &net.Dialer{KeepAliveConfig: keepalive, Timeout: s.opts.StatementTimeout}
	cfg.DialFunc = dialer.DialContext
	cfg.RuntimeParams["tcp_keepalives_idle"] = "5"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "5"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	ctx, cancel := context.WithTimeout(ctx, s.opts.StatementTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	return conn, classify(err)
}

// closeConn closes a dedicated connection without waiting long for a
// database that does not answer.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx)
}

// ChangeFeed wakes a follower of the change log: it LISTENs on
// mxid_changes on a connection of its own and signals C after every
// notification, and after every (re)connection, since changes committed
// while it was away were not notified. A lost connection is retried every
// second until the context given to FollowChanges ends. Signals coalesce:
// C holds at most one, so a reader reads the log from where it was after
// each.
type ChangeFeed struct {
	c    chan struct{}
	done chan struct{}
	mu   sync.Mutex
	err  error
}

// feedRetry is how long the feed waits before connecting again.
const feedRetry = time.Second

// FollowChanges starts the feed; it stops when ctx ends (Done is closed
// then).
func (s *Store) FollowChanges(ctx context.Context) *ChangeFeed {
	f := &ChangeFeed{c: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		for ctx.Err() == nil {
			err := s.listen(ctx, f)
			if ctx.Err() != nil {
				return
			}
			f.setErr(err)
			t := time.NewTimer(feedRetry)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
	return f
}

// listen runs one connection of the feed until it fails.
func (s *Store) listen(ctx context.Context, f *ChangeFeed) error {
	conn, err := s.dedicated(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, "LISTEN mxid_changes"); err != nil {
		return classify(err)
	}
	f.setErr(nil)
	f.signal()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return classify(err)
		}
		f.signal()
	}
}

func (f *ChangeFeed) signal() {
	select {
	case f.c <- struct{}{}:
	default:
	}
}

func (f *ChangeFeed) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// C is signalled when the log may have grown.
func (f *ChangeFeed) C() <-chan struct{} { return f.c }

// Err is nil while the feed is listening (or connecting for the first
// time), and otherwise says why it is not.
func (f *ChangeFeed) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Done is closed when the feed has stopped.
func (f *ChangeFeed) Done() <-chan struct{} { return f.done }

// Leadership is one replica's bid to lead: the replica that holds a session
// advisory lock, on a connection of its own, runs the jobs that must run
// once (pepper rotation, directory sync, sweeps, pruning the change log).
// PostgreSQL releases the lock when that session ends: at once when the
// leader's process dies (its socket closes), within the keepalive time
// (about 20 s) when its host vanishes. The leader checks its session every
// LeaderCheck and gives up leading as soon as a check fails, which is
// before another replica can take the lock over unless the database itself
// restarted; the jobs are idempotent, so a short overlap then is harmless.
type Leadership struct {
	s *Store

	mu     sync.Mutex
	conn   *pgx.Conn
	lost   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// LeaderCheck is how often the leader checks that its session (and so its
// lock) is still there.
const LeaderCheck = 2 * time.Second

// Leadership returns this store's bid to lead; it leads once TryAcquire
// succeeds.
func (s *Store) Leadership() *Leadership { return &Leadership{s: s} }

// TryAcquire takes the leader's lock if no other replica holds it and
// reports whether this replica leads now; it then leads until Lost is
// closed or Release. Calling it while leading reports true.
func (l *Leadership) TryAcquire(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		return true, nil
	}
	conn, err := l.s.dedicated(ctx)
	if err != nil {
		return false, err
	}
	cctx, cancel := context.WithTimeout(ctx, l.s.opts.StatementTimeout)
	defer cancel()
	var got bool
	if err := conn.QueryRow(cctx, "SELECT pg_try_advisory_lock($1, $2)", lockClass, lockLeader).Scan(&got); err != nil || !got {
		closeConn(conn)
		return false, classify(err)
	}
	mctx, stop := context.WithCancel(context.Background())
	l.conn, l.lost, l.cancel, l.done = conn, make(chan struct{}), stop, make(chan struct{})
	go l.check(mctx, conn, l.lost, l.done)
	return true, nil
}

// check pings the leader's session every LeaderCheck; the first failure
// ends the leadership.
func (l *Leadership) check(ctx context.Context, conn *pgx.Conn, lost, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(LeaderCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return // Release
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, LeaderCheck)
		err := conn.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			l.mu.Lock()
			l.conn = nil
			l.mu.Unlock()
			closeConn(conn)
			close(lost)
			return
		}
	}
}

// Lost is closed when the leadership acquired by the last successful
// TryAcquire has ended because its session failed; nil before any.
func (l *Leadership) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Release gives the lock up (closing its connection), if held.
func (l *Leadership) Release() {
	l.mu.Lock()
	conn, cancel, done := l.conn, l.cancel, l.done
	l.conn = nil
	l.mu.Unlock()
	if conn == nil {
		return
	}
	cancel()
	<-done
	// Unlock first: closing the connection alone frees the lock only once
	// the server's backend has exited, a moment later, and another
	// replica bidding meanwhile would lose for nothing.
	ctx, stop := context.WithTimeout(context.Background(), 2*time.Second)
	conn.Exec(ctx, "SELECT pg_advisory_unlock($1, $2)", lockClass, lockLeader)
	stop()
	closeConn(conn)
}

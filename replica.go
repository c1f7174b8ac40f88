package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/lookup"
)

// Several replicas on PostgreSQL (DESIGN.md §6). Each replica answers
// hashed lookups from its own index, and keeps it in step with every
// replica's writes by following the change log (follower); one of them,
// the holder of PostgreSQL's advisory lock, runs the jobs that must run
// once (leader). With bbolt there is one process: it runs everything and
// follows nothing.

// replicaName is the configured replica_name, or host-pid.
func replicaName(c DatabaseConfig) string {
	if c.ReplicaName != "" {
		return c.ReplicaName
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "mxid"
	}
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

const (
	// followerPoll is how often a replica reads the change log when no
	// notification woke it: the bound on propagation while LISTEN is down.
	followerPoll = time.Second
	// changeBatch is how many changes one read of the log takes.
	changeBatch = 1000
	// leaderRetry is how often a replica that does not lead bids for the
	// lock: with the leader's process gone, another leads within it.
	leaderRetry = 2 * time.Second
	// pruneEvery is how often the leader prunes the change log.
	pruneEvery = time.Hour
)

// changeLog is what the follower reads.
type changeLog interface {
	ChangesSince(seq int64, limit int) ([]db.Change, error)
	LatestChange() (int64, error)
}

// follower applies the change log, in sequence order, to the lookup index:
// binds and unbinds directly; a new pepper (the leader rotated) and a new
// directory snapshot (the leader synced) by rebuilds in the background,
// which replay the changes applied meanwhile. A reader too far behind (the
// log pruned past it) rebuilds from the store.
//
// It is also the server's BindingListener: after a bind or unbind this
// replica committed, it reads the log before the request answers, so the
// writer finds its own write at once, in the log's order.
type follower struct {
	log   *slog.Logger
	store changeLog
	lk    *lookup.Service
	now   func() time.Time

	seq      atomic.Int64 // the last change applied
	caughtUp atomic.Int64 // Unix ns when the log was last read to its end
	lag      atomic.Int64 // changes behind at the last scrape

	// Rounds of reading the log, one at a time: a caller that needs the
	// changes committed before its call waits for a round that started
	// after it.
	mu       sync.Mutex
	cond     *sync.Cond
	running  bool
	started  uint64
	finished uint64
	err      error // of the last finished round
	failing  bool  // the last round failed (logged once per outage)

	rebuild                   chan struct{}
	pepperDirty, directoryDir atomic.Bool

	// tokens is told of removed access tokens (the server's memory of
	// tokens that passed); set before run.
	tokens tokenForgetter
}

// tokenForgetter forgets access tokens it remembers (*server.Server).
type tokenForgetter interface {
	ForgetToken(hashHex string)
	ForgetAllTokens()
}

func newFollower(store changeLog, lk *lookup.Service, from int64, log *slog.Logger) *follower {
	f := &follower{log: log, store: store, lk: lk, now: time.Now, rebuild: make(chan struct{}, 1)}
	f.cond = sync.NewCond(&f.mu)
	f.seq.Store(from)
	f.caughtUp.Store(time.Now().UnixNano())
	return f
}

// Bound implements server.BindingListener: the bind is in the log; apply
// the log up to it.
func (f *follower) Bound(medium, address, mxid string) { f.syncForWriter() }

// Unbound implements server.BindingListener.
func (f *follower) Unbound(medium, address string) { f.syncForWriter() }

func (f *follower) syncForWriter() {
	if err := f.sync(context.Background()); err != nil {
		f.log.Warn("replica: reading the change log after a write failed; this replica's lookups show it once the log is read again", "err", err)
	}
}

// sync returns once a round of reading the log that started after the call
// has finished, with that round's error.
func (f *follower) sync(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := f.started + 1
	for f.finished < want {
		if f.running {
			f.cond.Wait()
			continue
		}
		f.running = true
		f.started++
		round := f.started
		f.mu.Unlock()
		err := f.readLog(ctx)
		f.mu.Lock()
		f.running, f.finished, f.err = false, round, err
		f.cond.Broadcast()
	}
	switch {
	case f.err != nil && !f.failing:
		f.failing = true
		f.log.Warn("replica: cannot read the change log; lookups answer from memory, without other replicas' writes, until it can", "err", f.err)
	case f.err == nil && f.failing:
		f.failing = false
		f.log.Info("replica: reading the change log again", "seq", f.seq.Load())
	}
	return f.err
}

// readLog applies every change after f.seq; one round at a time.
func (f *follower) readLog(ctx context.Context) error {
	for {
		cs, err := f.store.ChangesSince(f.seq.Load(), changeBatch)
		if errors.Is(err, db.ErrChangesPruned) {
			err = f.rebuildAll(ctx)
			if err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		for _, c := range cs {
			f.apply(c)
			f.seq.Store(c.Seq)
		}
		if len(cs) < changeBatch {
			f.caughtUp.Store(f.now().UnixNano())
			return nil
		}
	}
}

func (f *follower) apply(c db.Change) {
	switch c.Kind {
	case db.ChangeBind:
		f.lk.Index.Bound(c.Medium, c.Address, c.MXID)
	case db.ChangeUnbind:
		f.lk.Index.Unbound(c.Medium, c.Address)
	case db.ChangeDirectory:
		f.want(&f.directoryDir)
	case db.ChangeMeta:
		if c.Address == lookup.MetaKey {
			f.want(&f.pepperDirty)
		}
	case db.ChangeToken:
		if f.tokens != nil {
			f.tokens.ForgetToken(c.Address)
		}
	default: // written by a newer mxid: nothing this one keeps
	}
}

// rebuildAll starts over from the store: this replica is behind what the
// log still holds. The changes committed during the rebuild are applied
// after it (again: harmless).
func (f *follower) rebuildAll(ctx context.Context) error {
	latest, err := f.store.LatestChange()
	if err != nil {
		return err
	}
	f.log.Warn("replica: this replica is further behind than the change log reaches (pruned); rebuilding its lookup index from the database", "seq", f.seq.Load(), "latest", latest)
	if err := f.lk.Index.Refresh(ctx); err != nil {
		return fmt.Errorf("rebuilding the lookup index: %w", err)
	}
	f.want(&f.pepperDirty)
	f.want(&f.directoryDir)
	if f.tokens != nil {
		f.tokens.ForgetAllTokens() // which were removed meanwhile is unknown
	}
	f.seq.Store(latest)
	return nil
}

// want asks the background rebuilder for a rebuild.
func (f *follower) want(flag *atomic.Bool) {
	flag.Store(true)
	select {
	case f.rebuild <- struct{}{}:
	default:
	}
}

// run reads the log whenever the feed says it grew, and every followerPoll
// in any case, until ctx ends; a second goroutine rebuilds the index after
// a pepper or directory change.
func (f *follower) run(ctx context.Context, feed *pg.ChangeFeed) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { f.runRebuilds(ctx) })
	poll := time.NewTicker(followerPoll)
	defer poll.Stop()
	listening := true
	for {
		f.sync(ctx)
		if err := feed.Err(); (err == nil) != listening {
			listening = err == nil
			if listening {
				f.log.Info("replica: listening for changes again")
			} else {
				f.log.Warn("replica: not listening for changes; reading the change log every second until it can", "poll", followerPoll.String(), "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-feed.C():
		case <-poll.C:
		}
	}
}

func (f *follower) runRebuilds(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.rebuild:
		}
		var err error
		if f.pepperDirty.Swap(false) {
			if _, err = f.lk.Index.Reload(ctx); err != nil {
				f.pepperDirty.Store(true)
			}
		}
		if err == nil && f.directoryDir.Swap(false) {
			if err = f.lk.DirectoryChanged(ctx); err != nil {
				f.directoryDir.Store(true)
			}
		}
		if err != nil && ctx.Err() == nil {
			f.log.Error("replica: taking in another replica's pepper or directory snapshot failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(followerPoll):
				f.want(&f.pepperDirty) // a no-op rebuild when the pepper is already taken in
			}
		}
	}
}

// lagSeconds is how long since the log was last read to its end.
func (f *follower) lagSeconds() float64 {
	return max(0, float64(f.now().UnixNano()-f.caughtUp.Load())/1e9)
}

// lagChanges is how many changes the index has not applied (the last known
// figure while the database does not answer).
func (f *follower) lagChanges() int64 {
	if latest, err := f.store.LatestChange(); err == nil {
		f.lag.Store(max(0, latest-f.seq.Load()))
	}
	return f.lag.Load()
}

// ready is the follower's part of /health/ready.
func (f *follower) ready(maxLag time.Duration) func() error {
	return func() error {
		if lag := f.lagSeconds(); lag > maxLag.Seconds() {
			return fmt.Errorf("this replica's lookup index has not read the change log for %.0fs (more than [database] max_lag)", lag)
		}
		return nil
	}
}

// bidder is the leader's lock (pg.Leadership).
type bidder interface {
	TryAcquire(ctx context.Context) (bool, error)
	Lost() <-chan struct{}
	Release()
}

// leader runs the jobs that must run once (handed over by the lookup
// service and the server through their RunOnce hooks, and the change-log
// pruning) while this replica holds the leader's lock; it bids for the
// lock every leaderRetry while another replica holds it.
type leader struct {
	log *slog.Logger
	bid bidder

	mu      sync.Mutex
	jobs    []leaderJob
	ctx     context.Context // while leading
	running sync.WaitGroup
	leading atomic.Bool
}

type leaderJob struct {
	name string
	run  func(ctx context.Context)
}

// runOnce is the RunOnce hook: job runs while this replica leads.
func (l *leader) runOnce(name string, job func(ctx context.Context)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j := leaderJob{name, job}
	l.jobs = append(l.jobs, j)
	if l.ctx != nil {
		l.start(j)
	}
}

// start runs j until the leadership ends; l.mu is held.
func (l *leader) start(j leaderJob) {
	ctx := l.ctx
	l.running.Go(func() { j.run(ctx) })
}

// run bids until ctx ends, leading whenever the bid succeeds.
func (l *leader) run(ctx context.Context) {
	first := true
	for ctx.Err() == nil {
		ok, err := l.bid.TryAcquire(ctx)
		switch {
		case ok:
			l.lead(ctx)
			first = true
			continue
		case err != nil && ctx.Err() == nil:
			l.log.Debug("replica: bidding for the lead failed", "err", err)
		case first:
			l.log.Info("replica: another replica leads (pepper rotation, directory sync, sweeps run there); bidding again every few seconds", "retry", leaderRetry.String())
		}
		first = false
		wait := leaderRetry + rand.N(leaderRetry/4) // bids spread out
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// lead runs the jobs until the leadership is lost or ctx ends.
func (l *leader) lead(ctx context.Context) {
	lctx, cancel := context.WithCancel(ctx)
	l.mu.Lock()
	l.ctx = lctx
	names := make([]string, 0, len(l.jobs))
	for _, j := range l.jobs {
		l.start(j)
		names = append(names, j.name)
	}
	l.mu.Unlock()
	l.leading.Store(true)
	l.log.Info("replica: this replica leads", "jobs", names)
	select {
	case <-ctx.Done():
	case <-l.bid.Lost():
		l.log.Warn("replica: lost the lead (its database session ended); stopped the leader's jobs, bidding again")
	}
	l.mu.Lock()
	l.ctx = nil
	l.mu.Unlock()
	cancel()
	l.running.Wait()
	l.leading.Store(false)
	l.bid.Release() // at shutdown: another replica takes over at its next bid
}

// replica is this process's part in a set of replicas: the follower of
// the change log, the leader's bid, and the feed waking the follower.
type replica struct {
	name     string
	store    *pg.Store
	follower *follower
	leader   *leader
	log      *slog.Logger
	done     sync.WaitGroup
}

// newReplica prepares the replica's parts; the follower is made by follow
// once the lookup index exists.
func newReplica(cfg DatabaseConfig, store *pg.Store, log *slog.Logger) *replica {
	return &replica{name: replicaName(cfg), store: store, log: log,
		leader: &leader{log: log, bid: store.Leadership()}}
}

// follow makes the follower of lk's index, which was built from the store
// after the change numbered from was committed.
func (r *replica) follow(lk *lookup.Service, from int64) *follower {
	r.follower = newFollower(r.store, lk, from, r.log)
	return r.follower
}

// start runs the feed, the follower, the leader's bids and (as a leader's
// job) the pruning of the change log until ctx ends; wait waits for them.
func (r *replica) start(ctx context.Context) {
	r.leader.runOnce("change-log pruning", func(ctx context.Context) {
		t := time.NewTicker(pruneEvery)
		defer t.Stop()
		for {
			if n, err := r.store.PruneChanges(time.Now().UnixMilli()); err != nil {
				r.log.Error("replica: pruning the change log", "err", err)
			} else if n > 0 {
				r.log.Info("replica: pruned the change log", "changes", n)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	feed := r.store.FollowChanges(ctx)
	r.log.Info("replica: following the change log", "replica", r.name, "from_seq", r.follower.seq.Load(),
		"wake", "LISTEN mxid_changes", "poll", followerPoll.String())
	r.done.Go(func() { <-feed.Done() })
	r.done.Go(func() { r.follower.run(ctx, feed) })
	r.done.Go(func() { r.leader.run(ctx) })
}

func (r *replica) wait() { r.done.Wait() }

package server

import (
	"context"
	"sync"
	"time"
)

// Start runs the server's background work until ctx ends: the onbind
// delivery queue, the sweeps of expired invites, of expired validation
// sessions and of full budgets (once at start, then every
// sessionSweepEvery), and the retention sweep of the audit log and access
// tokens (once at start, then every retentionSweepEvery); with
// Deps.RunOnce, the sweeps are handed to it. The returned wait blocks until
// the work Start runs has stopped.
func (s *Server) Start(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	loops := []func(context.Context){s.runDelivery}
	if s.runOnce != nil {
		s.runOnce("invite sweep", s.runInviteSweep)
		s.runOnce("session sweep", s.runSessionSweep)
		s.runOnce("retention sweep", s.runRetentionSweep)
	} else {
		loops = append(loops, s.runInviteSweep, s.runSessionSweep, s.runRetentionSweep)
	}
	for _, loop := range loops {
		wg.Go(func() { loop(ctx) })
	}

	return wg.Wait
}

// runSessionSweep deletes expired validation sessions now and then every
// sessionSweepEvery until ctx ends.
func (s *Server) runSessionSweep(ctx context.Context) {
	s.every(ctx, sessionSweepEvery, func() {
		n, err := s.sweepSessions()
		if err != nil {
			s.log.Error("sweeping expired sessions", "err", err)
		} else if n > 0 {
			s.log.Info("swept expired sessions", "count", n)
		}
		if _, err := s.budgets.SweepBudgets(s.now().UnixMilli()); err != nil {
			s.log.Error("sweeping full rate-limit budgets", "err", err)
		}
	})
}

// every runs fn now and then every d until ctx ends.
func (s *Server) every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runRetentionSweep sweeps the audit log and access tokens now and then
// every retentionSweepEvery until ctx ends.
func (s *Server) runRetentionSweep(ctx context.Context) {
	s.every(ctx, retentionSweepEvery, s.sweepRetention)
}

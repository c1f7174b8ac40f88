package server

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"mxid/db"
	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// onbindBody is what the homeserver of the bound user receives: the
// association with its pending invites, each carrying a "signed" block
// {mxid, token} signed with the long-term key, the whole signed too.
func (s *Server) onbindBody(b db.Binding, pending []db.Invite) (string, []byte, error) {
	_, server, _ := matrixid.SplitUserID(b.MXID)
	invites := make([]any, 0, len(pending))
	for _, inv := range pending {
		signed, err := s.key.Sign(map[string]any{"mxid": b.MXID, "token": inv.Token}, s.cfg.ServerName)
		if err != nil {
			return "", nil, err
		}
		invites = append(invites, map[string]any{
			"medium": inv.Medium, "address": inv.Address, "mxid": b.MXID,
			"room_id": inv.RoomID, "sender": inv.Sender, "token": inv.Token, "signed": signed,
		})
	}
	assoc := association(b)
	assoc["invites"] = invites
	signed, err := s.key.Sign(assoc, s.cfg.ServerName)
	if err != nil {
		return "", nil, err
	}
	body, err := json.Marshal(signed)
	return server, body, err
}

// delivery is the onbind worker's state.
type delivery struct {
	kick chan struct{}
}

func (s *Server) kickDelivery() {
	select {
	case s.onbind.kick <- struct{}{}:
	default:
	}
}

// runDelivery delivers queued onbind jobs until ctx ends: due jobs are sent
// (federation.Resolver.Onbind: POST, then PUT on 404 or 405), removed after a
// 2xx, and otherwise retried with exponential backoff up to the configured
// number of attempts. The queue is in the store, so it survives restarts.
func (s *Server) runDelivery(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.onbind.kick:
		}
		s.deliverDue(ctx)
		wait := deliveryPollPeriod
		if due, ok, err := s.store.NextJobDue(); err == nil && ok {
			if d := time.UnixMilli(due).Sub(s.now()); d < wait {
				wait = max(d, 10*time.Millisecond)
			}
		}
		timer.Reset(wait)
	}
}

func (s *Server) deliverDue(ctx context.Context) {
	jobs, err := s.store.DueJobs(s.now().UnixMilli(), deliveryBatch)
	if err != nil {
		s.log.Error("reading the onbind queue", "err", err)
		return
	}
	s.metrics.claimed(len(jobs))
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.deliverJob(ctx, j)
		}()
	}
	wg.Wait()
}

func (s *Server) deliverJob(ctx context.Context, j db.Job) {
	status := 0
	resp, _, err := s.fed.Onbind(ctx, j.Destination, j.Body, onbindResponseCap)
	if err == nil {
		status = resp.Status
	}
	if ctx.Err() != nil {
		return // shutting down: the job stays queued as it is
	}
	if err == nil && status/100 == 2 {
		if err := s.store.CompleteJob(j, s.now().UnixMilli()); err != nil {
			s.log.Error("completing an onbind job", "job", j.ID, "err", err)
			return
		}
		s.log.Info("onbind delivered", "job", j.ID, "destination", j.Destination, "invites", len(j.InviteTokens), "attempts", j.Attempts+1)
		return
	}
	reason := ""
	if err != nil {
		reason = err.Error()
	} else {
		reason = http.StatusText(status)
	}
	if j.Attempts+1 >= s.cfg.Invites.DeliveryMaxAttempts {
		s.log.Error("onbind delivery abandoned", "job", j.ID, "destination", j.Destination, "attempts", j.Attempts+1, "last_error", reason)
		if err := s.store.DropJob(j); err != nil {
			s.log.Error("dropping an onbind job", "job", j.ID, "err", err)
		}
		return
	}
	backoff := s.cfg.Invites.DeliveryBackoff << min(j.Attempts, 30)
	if backoff <= 0 || backoff > s.cfg.Invites.DeliveryMaxBackoff {
		backoff = s.cfg.Invites.DeliveryMaxBackoff
	}
	backoff += time.Duration(rand.Int64N(int64(backoff)/10 + 1)) // jitter, so retries do not arrive together
	attrs := []any{"job", j.ID, "destination", j.Destination, "attempt", j.Attempts + 1, "retry_in", backoff.Round(time.Second).String(), "error", reason}
	if errors.Is(err, outbound.ErrBlocked) {
		attrs = append(attrs, "hint", "the homeserver's address is private, loopback or reserved, which [outbound] refuses: add its range to allow_cidrs, or pin it in [outbound.pins]")
	}
	s.log.Warn("onbind delivery failed; will retry", attrs...)
	if err := s.store.RetryJob(j, s.now().Add(backoff).UnixMilli(), reason); err != nil {
		s.log.Error("rescheduling an onbind job", "job", j.ID, "err", err)
	}
}

// runInviteSweep removes expired invites hourly.
func (s *Server) runInviteSweep(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := s.store.SweepInvites(s.now().UnixMilli()); err != nil {
			s.log.Error("sweeping expired invites", "err", err)
		} else if n > 0 {
			s.log.Info("expired invites removed", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

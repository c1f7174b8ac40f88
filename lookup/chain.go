package lookup

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// Link is one source of a Chain with its deadline. Remote sources (DNS,
// forwarders) are asked only when the caller allows recursion.
type Link struct {
	Source   Source
	Deadline time.Duration
	Remote   bool

	hits, misses, errors atomic.Int64
}

// Chain is the cascade: each source is asked, most authoritative first, for
// the 3PIDs no earlier source knew. A failing or slow source is logged and
// skipped, never fatal.
type Chain struct {
	links   []*Link
	log     *slog.Logger
	observe func(source, outcome string, d time.Duration) // Deps.Observe, may be nil
}

// NewChain builds a cascade over links, in order.
func NewChain(log *slog.Logger, links ...*Link) *Chain {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Chain{links: links, log: log}
}

// Result is one answer of the cascade: the Matrix ID and the source that
// knew it.
type Result struct {
	MXID   string
	Source string
}

// Lookup resolves canonical 3PIDs through the cascade. With recurse false
// only local sources (bindings, LDAP) are asked.
func (c *Chain) Lookup(ctx context.Context, threepids []ThreePID, recurse bool) map[ThreePID]Result {
	out := make(map[ThreePID]Result, len(threepids))
	todo := dedupe(threepids)
	for _, l := range c.links {
		if len(todo) == 0 || ctx.Err() != nil {
			break
		}
		if l.Remote && !recurse {
			c.note(l.Source.Name(), "skipped", 0)
			continue
		}
		start := time.Now() // before the deadline starts: took >= Deadline when it ends the call
		lctx, cancel := context.WithTimeout(ctx, l.Deadline)
		got, err := l.Source.Lookup(lctx, todo)
		took := time.Since(start)
		// A source's own I/O deadline may fire just before the context's.
		var netErr net.Error
		timedOut := errors.Is(lctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
			(errors.As(err, &netErr) && netErr.Timeout()) || took >= l.Deadline
		cancel()
		if err != nil {
			l.errors.Add(1)
			if !errors.As(err, new(loggedError)) { // a source that logs its own outage once
				c.log.Warn("lookup source failed; skipped", "source", l.Source.Name(), "addresses", len(todo), "duration_ms", took.Milliseconds(), "err", err)
			}
		}
		rest := todo[:0:0]
		for _, tp := range todo {
			if m, ok := got[tp]; ok && m != "" {
				out[tp] = Result{MXID: m, Source: l.Source.Name()}
				l.hits.Add(1)
			} else {
				rest = append(rest, tp)
				if err == nil {
					l.misses.Add(1)
				}
			}
		}
		switch {
		case err != nil && timedOut && ctx.Err() == nil:
			c.note(l.Source.Name(), "timeout", took)
		case err != nil:
			c.note(l.Source.Name(), "error", took)
		case len(rest) < len(todo):
			c.note(l.Source.Name(), "found", took)
		default:
			c.note(l.Source.Name(), "not_found", took)
		}
		todo = rest
	}
	return out
}

// note reports one source asked (or skipped) to Deps.Observe.
func (c *Chain) note(source, outcome string, d time.Duration) {
	if c.observe != nil {
		c.observe(source, outcome, d)
	}
}

func dedupe(tps []ThreePID) []ThreePID {
	seen := make(map[ThreePID]bool, len(tps))
	out := make([]ThreePID, 0, len(tps))
	for _, tp := range tps {
		if !seen[tp] {
			seen[tp] = true
			out = append(out, tp)
		}
	}
	return out
}

// SourceStats are one source's counters: 3PIDs found, 3PIDs it answered
// "unknown" for, and failed calls.
type SourceStats struct {
	Source               string
	Hits, Misses, Errors int64
}

// Stats returns the counters of every source, in cascade order.
func (c *Chain) Stats() []SourceStats {
	out := make([]SourceStats, 0, len(c.links))
	for _, l := range c.links {
		out = append(out, SourceStats{Source: l.Source.Name(), Hits: l.hits.Load(), Misses: l.misses.Load(), Errors: l.errors.Load()})
	}
	return out
}

// Local is the source of local bindings (the store).
type Local struct{ Store Store }

// Name implements Source.
func (Local) Name() string { return "local" }

// Lookup implements Source with one read transaction.
func (l Local) Lookup(ctx context.Context, threepids []ThreePID) (map[ThreePID]string, error) {
	keys := make([][2]string, len(threepids))
	for i, tp := range threepids {
		keys[i] = [2]string{tp.Medium, tp.Address}
	}
	mxids, err := l.Store.BoundMXIDs(keys)
	if err != nil {
		return nil, err
	}
	out := map[ThreePID]string{}
	for i, m := range mxids {
		if m != "" {
			out[threepids[i]] = m
		}
	}
	return out, nil
}

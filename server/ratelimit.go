package server

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"mxid/lookup"
)

// Rate is one rate limit in the configuration: up to Burst events at once,
// refilled by one every Every. Burst 0 turns the limit off.
type Rate = lookup.Rate

// limiter is a set of token buckets keyed by string (a client IP, an
// account's or a homeserver's lookups, a trusted homeserver's subject), all
// with the same rate, in this replica's memory: the limits that protect the
// replica itself. The limits that protect other people are budgets
// (budgets.go), shared by replicas. Its refusals say what was counted and
// which setting counts it.
type limiter struct {
	limit
	now   func() time.Time
	mu    sync.Mutex
	byKey map[string]*rate.Limiter
}

func newLimiter(r Rate, now func() time.Time, name, what string) *limiter {
	return &limiter{limit: limit{r, name, what}, now: now, byKey: map[string]*rate.Limiter{}}
}

// limit is one configured rate limit: its rate, the setting's name and
// what it counts, in words.
type limit struct {
	rate Rate
	name string // the configuration key, e.g. "ratelimit.email_address"
	what string // what is counted, in words: "verification emails to this address"
}

// spend takes n tokens of key's bucket, or answers the refusal.
func (l *limiter) spend(key string, n int) error {
	if ok, wait := l.take(key, n); !ok {
		return l.refusal(wait)
	}
	return nil
}

// refusal is 429 M_LIMIT_EXCEEDED naming what was counted and the setting
// (so an operator reading either side's log knows which limit it was).
func (l limit) refusal(retryAfter time.Duration) *Error {
	e := errLimited(retryAfter)
	e.Message = fmt.Sprintf("Too many %s; try again later (limit: %s)", l.what, l.name)
	return e
}

// maxLimiterKeys bounds memory; past it, full (idle) buckets are dropped.
const maxLimiterKeys = 100000

// take spends n tokens of key's bucket. When there are not enough it spends
// nothing and reports how long until there will be.
func (l *limiter) take(key string, n int) (ok bool, retryAfter time.Duration) {
	if l == nil || l.rate.Burst == 0 {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.byKey[key]
	if lim == nil {
		if len(l.byKey) >= maxLimiterKeys {
			l.sweep(now)
		}
		lim = rate.NewLimiter(rate.Every(l.rate.Every), l.rate.Burst)
		lim.SetLimitAt(now, rate.Every(l.rate.Every)) // start the bucket full at the injected time
		l.byKey[key] = lim
	}
	if n > l.rate.Burst {
		// More than can ever be granted at once: the wait is for a full bucket.
		return false, time.Duration(l.rate.Burst) * l.rate.Every
	}
	res := lim.ReserveN(now, n)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep drops buckets that are full again: forgetting them changes nothing.
func (l *limiter) sweep(now time.Time) {
	for k, lim := range l.byKey {
		if lim.TokensAt(now) >= float64(l.rate.Burst) {
			delete(l.byKey, k)
		}
	}
}

// errLimited is 429 M_LIMIT_EXCEEDED with retry_after_ms.
func errLimited(retryAfter time.Duration) *Error {
	ms := retryAfter.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return &Error{Status: http.StatusTooManyRequests, Code: "M_LIMIT_EXCEEDED", Message: "Too many requests; try again later",
		Extra: map[string]any{"retry_after_ms": ms}}
}

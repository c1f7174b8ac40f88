package db

import (
	"errors"
	"math"
)

// Budgets are the token buckets of the rate limits that protect other
// people (verification mails and SMS per address, number, country and
// requester; invites per sender and per invited address). The arithmetic is
// here, once, for every place that keeps them: the server's memory (one
// process) and PostgreSQL (package db/pg, shared by replicas). The bbolt
// store does not keep them: the one process that owns the file counts them
// in memory.

// Bucket is one token bucket: Key names it (the limit and what it counts),
// it holds at most Burst tokens (at least 1) and gains one every EveryMS
// milliseconds. A bucket never seen before is full.
type Bucket struct {
	Key     string
	Burst   int
	EveryMS int64
}

// BucketState is what is kept of a bucket: how many tokens it held at
// UpdatedMS.
type BucketState struct {
	Tokens    float64
	UpdatedMS int64
}

// ErrBadBuckets is returned for a charge whose buckets are malformed
// (Burst < 1, EveryMS < 1, or one key twice): a caller's bug.
var ErrBadBuckets = errors.New("budget buckets: burst and every must be positive and keys distinct")

// CheckBuckets reports ErrBadBuckets for malformed buckets.
func CheckBuckets(bs []Bucket) error {
	for i, b := range bs {
		if b.Burst < 1 || b.EveryMS < 1 {
			return ErrBadBuckets
		}
		for _, o := range bs[:i] {
			if o.Key == b.Key {
				return ErrBadBuckets
			}
		}
	}
	return nil
}

// tokensAt is how many tokens the bucket holds at nowMS. A state from the
// future (another replica's clock ahead of this one) has gained nothing.
func (b Bucket) tokensAt(st BucketState, nowMS int64) float64 {
	elapsed := max(0, nowMS-st.UpdatedMS)
	return math.Min(float64(b.Burst), st.Tokens+float64(elapsed)/float64(b.EveryMS))
}

// FullMS is when a bucket in state st is full again: from then on keeping
// it or forgetting it is the same.
func (b Bucket) FullMS(st BucketState) int64 {
	missing := float64(b.Burst) - st.Tokens
	if missing <= 0 {
		return st.UpdatedMS
	}
	return st.UpdatedMS + int64(math.Ceil(missing*float64(b.EveryMS)))
}

// ChargeBuckets takes one token from each bucket, all or none. states[i]
// is what is kept of bs[i] (nil: never seen, so full). When every bucket
// holds a token it returns their new states and refused = -1; otherwise
// it returns the index of the first bucket short of a token and how long
// until that bucket holds one, and nothing is to be written.
func ChargeBuckets(bs []Bucket, states []*BucketState, nowMS int64) (next []BucketState, refused int, retryAfterMS int64) {
	next = make([]BucketState, len(bs))
	for i, b := range bs {
		st := BucketState{Tokens: float64(b.Burst), UpdatedMS: nowMS}
		if states[i] != nil {
			st = *states[i]
		}
		tokens := b.tokensAt(st, nowMS)
		if tokens < 1 {
			return nil, i, max(1, int64(math.Ceil((1-tokens)*float64(b.EveryMS))))
		}
		// Never move a bucket's time backwards: a replica whose clock is
		// behind must not hand the next one extra refill.
		next[i] = BucketState{Tokens: tokens - 1, UpdatedMS: max(st.UpdatedMS, nowMS)}
	}
	return next, -1, 0
}

package server

import (
	"fmt"
	"sync"
	"time"

	"mxid/db"
	"mxid/lookup/threepid"
)

// Budgets keeps the token buckets of the limits that protect other people:
// verification mails and SMS per address, number and country and per
// requester ([ratelimit] email_address, msisdn_number, msisdn_country,
// request_token), invites per sender and per invited address ([invites]
// rate_limit, address_rate_limit). Replicas share them (PostgreSQL: db/pg
// implements it), so N replicas do not allow N times as many; one process
// keeps them in memory (memoryBudgets). Per-IP request buckets ([ratelimit]
// attempts, register, the lookup budgets) stay in each replica's memory
// (limiter): they protect the replica itself.
//
// ChargeBudgets may be called inside a Store transaction's callback
// (RequestSession's decide): an implementation over the store's database
// must not wait for anything that transaction holds (db/pg charges on
// connections of its own).
type Budgets interface {
	// ChargeBudgets takes one token from each bucket, all or none (keys
	// distinct; db.Bucket says the rest). It returns -1 when every bucket
	// paid, else the index of the first one short of a token and the
	// milliseconds until it holds one; then nothing was spent. nowMS is
	// the caller's clock.
	ChargeBudgets(buckets []db.Bucket, nowMS int64) (refused int, retryAfterMS int64, err error)
	// SweepBudgets forgets the buckets that are full at nowMS (forgetting
	// a full bucket changes nothing) and says how many.
	SweepBudgets(nowMS int64) (int, error)
	// ForgetBudgets forgets the buckets of keys (an erased user's and its
	// addresses': their keys name them) and says how many there were.
	ForgetBudgets(keys []string) (int, error)
}

// The names of the budgets whose keys name a person: an erasure forgets
// their buckets (erasedBudgetKeys).
const (
	budgetRequestToken  = "ratelimit.request_token"
	budgetEmailAddress  = "ratelimit.email_address"
	budgetMSISDNNumber  = "ratelimit.msisdn_number"
	budgetInvites       = "invites.rate_limit"
	budgetInviteAddress = "invites.address_rate_limit"
	budgetSenderAccount = "acct:" // requestToken's key for an account (senderKey)
	budgetSenderInvites = "user:" // store-invite's key for a sender
)

// budgetKey is the bucket key of key in the budget named name: the
// setting's name keeps limits apart.
func budgetKey(name, key string) string { return name + "/" + key }

// erasedBudgetKeys are the bucket keys that name mxid (when set) or one of
// the 3PIDs of bs.
func erasedBudgetKeys(mxid string, bs []db.Binding) []string {
	var keys []string
	if mxid != "" {
		keys = append(keys, budgetKey(budgetRequestToken, budgetSenderAccount+mxid), budgetKey(budgetInvites, budgetSenderInvites+mxid))
	}
	for _, b := range bs {
		if b.Medium == threepid.MSISDN {
			keys = append(keys, budgetKey(budgetMSISDNNumber, b.Address))
		} else {
			keys = append(keys, budgetKey(budgetEmailAddress, b.Address), budgetKey(budgetInviteAddress, b.Address))
		}
	}
	return keys
}

// budget is one limit that protects others, counted by Budgets.
type budget = limit

// budgetCharge is one token of budget b for key.
type budgetCharge struct {
	b   budget
	key string
}

// charge spends one token of each charge's bucket, all or none, so a
// refusal by one limit does not use up another (a requester over its own
// limit cannot drain a victim address's budget). A limit that is off
// (burst 0) is not charged. The refusal is 429 M_LIMIT_EXCEEDED naming
// what was counted and the setting.
func (s *Server) charge(charges ...budgetCharge) error {
	var buckets []db.Bucket
	var on []budget
	for _, c := range charges {
		if c.b.rate.Burst == 0 {
			continue
		}
		// A changed rate starts from what was counted (clamped to the
		// new burst).
		buckets = append(buckets, db.Bucket{Key: budgetKey(c.b.name, c.key), Burst: c.b.rate.Burst, EveryMS: max(1, c.b.rate.Every.Milliseconds())})
		on = append(on, c.b)
	}
	if len(buckets) == 0 {
		return nil
	}
	refused, wait, err := s.budgets.ChargeBudgets(buckets, s.now().UnixMilli())
	if err != nil {
		return errInternal(fmt.Errorf("charging %s: %w", on[0].name, err))
	}
	if refused >= 0 {
		return on[refused].refusal(time.Duration(wait) * time.Millisecond)
	}
	return nil
}

// memoryBudgets are Budgets in this process's memory: what a single
// process (the bbolt backend) uses. Buckets are counted as in PostgreSQL
// (db.ChargeBuckets).
type memoryBudgets struct {
	mu      sync.Mutex
	buckets map[string]memoryBucket
	sweepAt int // sweep when this many buckets are kept
}

type memoryBucket struct {
	state  db.BucketState
	fullMS int64 // when it is full again
}

func newMemoryBudgets() *memoryBudgets {
	return &memoryBudgets{buckets: map[string]memoryBucket{}, sweepAt: maxBudgetKeys}
}

// maxBudgetKeys bounds memory: past it, full buckets are forgotten before
// new ones are added. When few are full, the next such sweep waits until
// the count has doubled, so a charge never scans all buckets each time.
const maxBudgetKeys = 100000

func (m *memoryBudgets) ChargeBudgets(bs []db.Bucket, nowMS int64) (int, int64, error) {
	if err := db.CheckBuckets(bs); err != nil {
		return 0, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	states := make([]*db.BucketState, len(bs))
	for i, b := range bs {
		if mb, ok := m.buckets[b.Key]; ok {
			states[i] = &mb.state
		}
	}
	next, refused, wait := db.ChargeBuckets(bs, states, nowMS)
	if refused >= 0 {
		return refused, wait, nil
	}
	if len(m.buckets)+len(bs) > m.sweepAt {
		m.sweep(nowMS)
	}
	for i, b := range bs {
		m.buckets[b.Key] = memoryBucket{next[i], b.FullMS(next[i])}
	}
	return -1, 0, nil
}

func (m *memoryBudgets) SweepBudgets(nowMS int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sweep(nowMS), nil
}

func (m *memoryBudgets) ForgetBudgets(keys []string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, k := range keys {
		if _, ok := m.buckets[k]; ok {
			delete(m.buckets, k)
			n++
		}
	}
	return n, nil
}

func (m *memoryBudgets) sweep(nowMS int64) int {
	n := 0
	for k, mb := range m.buckets {
		if mb.fullMS <= nowMS {
			delete(m.buckets, k)
			n++
		}
	}
	m.sweepAt = max(maxBudgetKeys, 2*len(m.buckets))
	return n
}

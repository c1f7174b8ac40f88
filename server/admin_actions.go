package server

// What `mxid admin` does (Admin): read what mxid holds about an address,
// remove a binding, erase a user or an address, look at invites and the
// onbind queue, count what the store holds, read the audit log. The
// running server serves it on its admin socket (admin.go); with no server
// running, main builds an Admin over the store it opens. Every action
// that changes data writes its audit entries in the same transaction; the
// log never names an address, only its keyed hash.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"mxid/db"
	"mxid/lookup/threepid"
	"mxid/server/matrixid"
)

// Admin performs the operator's actions on a store.
type Admin struct {
	store       Store
	audit       *auditor
	now         func() time.Time
	log         *slog.Logger
	metrics     *Metrics
	binds       BindingListener
	budgets     Budgets
	index       func() lookupIndexStats
	forgetAfter time.Duration
	owed        atomic.Bool // an erasure's free pages still to scrub
	// forgetUser drops what this process remembers of an erased user
	// (the running server's tokens kept for a database outage).
	forgetUser func(mxid string)
}

// AdminDeps are an Admin's collaborators. Only Store is required.
type AdminDeps struct {
	Store  Store
	Now    func() time.Time
	Logger *slog.Logger
	// Metrics counts the actions (nil: not counted).
	Metrics *Metrics
	// Bindings is told about removed bindings (the running server's
	// lookup index); nil with no server running.
	Bindings BindingListener
	// Budgets are forgotten for an erased user and its addresses; nil
	// with no server running and no shared budgets.
	Budgets Budgets
}

// lookupIndexStats is what stats reports of the running server's index.
type lookupIndexStats struct {
	entries   int
	pepperAge time.Duration
}

// forgetGrace is how long an erasure on a store with a change log waits
// before removing the erased 3PIDs' changes: the other replicas follow the
// log within about a second; one that is further behind rebuilds its index.
const forgetGrace = 2 * time.Second

// NewAdmin builds an Admin over a store.
func NewAdmin(d AdminDeps) *Admin {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Budgets == nil {
		d.Budgets, _ = d.Store.(Budgets)
	}
	return &Admin{store: d.Store, audit: &auditor{store: d.Store, now: d.Now}, now: d.Now, log: d.Logger,
		metrics: d.Metrics, binds: d.Bindings, budgets: d.Budgets, forgetAfter: forgetGrace}
}

// Views: what the actions answer, as JSON for the socket and -json.

// BindingView is one binding of an address: made here ("local", with its
// time) or read from the LDAP directory ("directory").
type BindingView struct {
	MXID   string `json:"mxid"`
	Source string `json:"source"`
	TS     int64  `json:"ts,omitempty"`
}

// InviteView is a stored invite, without its token or key.
type InviteView struct {
	Medium    string `json:"medium"`
	Address   string `json:"address"`
	RoomID    string `json:"room_id"`
	Sender    string `json:"sender"`
	State     string `json:"state"` // pending, queued (in delivery Job), delivered
	Job       uint64 `json:"job,omitempty"`
	CreatedTS int64  `json:"created_ts"`
	ExpiresTS int64  `json:"expires_ts"`
}

// SessionView is a validation session, without its token or client secret.
type SessionView struct {
	SID         string `json:"sid"`
	CreatedTS   int64  `json:"created_ts"`
	ValidatedTS int64  `json:"validated_ts,omitempty"`
	ExpiresTS   int64  `json:"expires_ts"` // when it can no longer be used
	SweptTS     int64  `json:"swept_ts"`   // when the sweep removes it
}

// ShowResult is what mxid holds about one address.
type ShowResult struct {
	Medium   string        `json:"medium"`
	Address  string        `json:"address"`
	Bindings []BindingView `json:"bindings"`
	Invites  []InviteView  `json:"invites"`
	Sessions []SessionView `json:"sessions"`
}

// UnbindResult is the binding mxid admin unbind removed.
type UnbindResult struct {
	Medium  string `json:"medium"`
	Address string `json:"address"`
	MXID    string `json:"mxid"`
}

// EraseResult is what an erasure removed, and whether the traces of it
// left in the store's free space were scrubbed.
type EraseResult struct {
	// Subject is the Matrix ID or the address erased.
	Subject string    `json:"subject"`
	Removed db.Erased `json:"removed"`
	// Budgets counts the rate-limit buckets forgotten.
	Budgets int `json:"budgets"`
	// Traces says what happened to the removed data's traces: "scrubbed"
	// (bbolt: free pages zeroed), "scrub deferred" (a read was under
	// way; the retention sweep scrubs within 10 minutes), "change log
	// forgotten" (PostgreSQL).
	Traces string `json:"traces"`
}

// JobView is a queued onbind delivery, without its body.
type JobView struct {
	ID          uint64 `json:"id"`
	Destination string `json:"destination"`
	MXID        string `json:"mxid,omitempty"`
	Invites     int    `json:"invites"`
	Attempts    int    `json:"attempts"`
	DueTS       int64  `json:"due_ts"`
	CreatedTS   int64  `json:"created_ts"`
	LastError   string `json:"last_error,omitempty"`
}

// StatsResult counts what the store holds.
type StatsResult struct {
	Store  string         `json:"store"`
	Counts map[string]int `json:"counts"`
	// QueueDepth is the onbind deliveries waiting.
	QueueDepth int `json:"queue_depth"`
	// IndexEntries and PepperAgeSeconds are the running server's lookup
	// index (absent when no server runs).
	IndexEntries     *int     `json:"index_entries,omitempty"`
	PepperAgeSeconds *float64 `json:"pepper_age_seconds,omitempty"`
}

// ParseAddress reads an address as an operator types it: an email address
// (with "@"), or a phone number in international form ("+44 7700 900123",
// "447700900123"). It returns the medium and the canonical address.
func ParseAddress(s string) (medium, address string, err error) {
	medium, address, err = threepid.Infer(s)
	if err != nil {
		return "", "", errInvalid("address", "not an email address or a phone number in international form (+44 7700 900123)")
	}
	return medium, address, nil
}

func errNotFound(format string, args ...any) *Error {
	return errorf(http.StatusNotFound, "M_NOT_FOUND", format, args...)
}

// counted records an action's outcome in the metrics.
func (a *Admin) counted(action string, err error) error {
	outcome := "ok"
	if err != nil {
		outcome = "error"
		if e := asError(err); e.Status < 500 {
			outcome = "refused"
		}
	}
	a.metrics.AdminAction(action, outcome)
	return err
}

// Show says what mxid holds about an address: its bindings (local and from
// the directory), the invites for it and its validation sessions. An
// address mxid holds nothing about is M_NOT_FOUND.
func (a *Admin) Show(address string) (ShowResult, error) {
	r, err := a.show(address)
	return r, a.counted("show", err)
}

func (a *Admin) show(raw string) (ShowResult, error) {
	medium, address, err := ParseAddress(raw)
	if err != nil {
		return ShowResult{}, err
	}
	r := ShowResult{Medium: medium, Address: address, Bindings: []BindingView{}, Invites: []InviteView{}, Sessions: []SessionView{}}
	switch b, err := a.store.GetBinding(medium, address); {
	case err == nil:
		r.Bindings = append(r.Bindings, BindingView{MXID: b.MXID, Source: "local", TS: b.TS})
	case !errors.Is(err, db.ErrNotFound):
		return r, errInternal(err)
	}
	dir, err := a.store.DirectoryMXIDs([][2]string{{medium, address}})
	if err != nil {
		return r, errInternal(err)
	}
	if dir[0] != "" {
		r.Bindings = append(r.Bindings, BindingView{MXID: dir[0], Source: "directory"})
	}
	invs, err := a.store.Invites(db.InviteFilter{Medium: medium, Address: address})
	if err != nil {
		return r, errInternal(err)
	}
	r.Invites = inviteViews(invs)
	sessions, err := a.store.SessionsOf(medium, address)
	if err != nil {
		return r, errInternal(err)
	}
	for _, s := range sessions {
		r.Sessions = append(r.Sessions, SessionView{SID: s.ID, CreatedTS: s.CreatedTS, ValidatedTS: s.ValidatedTS,
			ExpiresTS: s.ModifiedTS + sessionLifetime.Milliseconds(), SweptTS: s.ModifiedTS + SessionKept.Milliseconds()})
	}
	if len(r.Bindings)+len(r.Invites)+len(r.Sessions) == 0 {
		return r, errNotFound("mxid holds nothing about %s %s (mxid admin audit -address lists what was removed)", medium, address)
	}
	return r, nil
}

func inviteViews(invs []db.Invite) []InviteView {
	out := make([]InviteView, 0, len(invs))
	for _, inv := range invs {
		v := InviteView{Medium: inv.Medium, Address: inv.Address, RoomID: inv.RoomID, Sender: inv.Sender, Job: inv.QueuedJob,
			CreatedTS: inv.CreatedTS, ExpiresTS: inv.ExpiresTS, State: "pending"}
		switch {
		case inv.DeliveredTS != 0:
			v.State = "delivered"
		case inv.QueuedJob != 0:
			v.State = "queued"
		}
		out = append(out, v)
	}
	return out
}

// Unbind removes the local binding of an address, whoever holds it, as the
// operator ("admin" in the audit log); every replica's index forgets it.
func (a *Admin) Unbind(address string) (UnbindResult, error) {
	r, err := a.unbindAddress(address)
	return r, a.counted("unbind", err)
}

func (a *Admin) unbindAddress(raw string) (UnbindResult, error) {
	medium, address, err := ParseAddress(raw)
	if err != nil {
		return UnbindResult{}, err
	}
	b, err := a.store.GetBinding(medium, address)
	if errors.Is(err, db.ErrNotFound) {
		if dir, derr := a.store.DirectoryMXIDs([][2]string{{medium, address}}); derr == nil && dir[0] != "" {
			return UnbindResult{}, errNotFound("%s %s is not bound here: it is in the LDAP directory (to %s); remove it there", medium, address, dir[0])
		}
		return UnbindResult{}, errNotFound("%s %s is not bound", medium, address)
	}
	if err != nil {
		return UnbindResult{}, errInternal(err)
	}
	if _, err := a.unbind(medium, address, b.MXID, actorAdmin); err != nil {
		return UnbindResult{}, err
	}
	a.log.Info("admin: binding removed", "medium", medium, "mxid", b.MXID)
	return UnbindResult{Medium: medium, Address: address, MXID: b.MXID}, nil
}

// unbind removes medium/address -> mxid if it is bound so, with its audit
// entry (actor: a user, a homeserver or admin), and tells the index.
func (a *Admin) unbind(medium, address, mxid, actor string) (bool, error) {
	e, err := a.audit.entryFor(actor, actionUnbind, medium, address, mxid, "")
	if err != nil {
		return false, errInternal(err)
	}
	deleted, err := a.store.Unbind(medium, address, mxid, e)
	if err != nil {
		return false, errInternal(err)
	}
	if deleted {
		if a.binds != nil {
			a.binds.Unbound(medium, address)
		}
		a.metrics.Unbind(unbindBy(actor))
	}
	return deleted, nil
}

// unbindBy is the metrics label of an unbind's actor.
func unbindBy(actor string) string {
	switch {
	case actor == actorAdmin:
		return "admin"
	case strings.HasPrefix(actor, "@"):
		return "user"
	}
	return "homeserver"
}

// Erase removes everything mxid holds about a user (a Matrix ID) or an
// address: see db.Store.EraseUser and Erase3PID. It is idempotent.
func (a *Admin) Erase(ctx context.Context, subject string) (EraseResult, error) {
	r, err := a.erase(ctx, subject)
	return r, a.counted("erase", err)
}

func (a *Admin) erase(ctx context.Context, subject string) (EraseResult, error) {
	var medium, address, mxid string
	if strings.HasPrefix(subject, "@") {
		if !matrixid.ValidUserID(subject) {
			return EraseResult{}, errInvalid("user", "not a valid Matrix user ID (@localpart:server.name)")
		}
		mxid = subject
	} else {
		var err error
		if medium, address, err = ParseAddress(subject); err != nil {
			return EraseResult{}, err
		}
	}
	if err := a.audit.ready(); err != nil { // the transaction's callback hashes
		return EraseResult{}, errInternal(err)
	}
	var hashErr error
	entries := func(e db.Erased) []db.AuditEntry {
		if mxid == "" { // one entry, about the address
			owner := ""
			if len(e.Bindings) > 0 {
				owner = e.Bindings[0].MXID
			}
			var x db.AuditEntry
			x, hashErr = a.audit.entryFor(actorAdmin, actionErase, medium, address, owner, e.String())
			return []db.AuditEntry{x}
		}
		// The user's erasure, then each of its addresses.
		out := []db.AuditEntry{a.audit.entry(actorAdmin, actionErase, mxid, e.String())}
		for _, b := range e.Bindings {
			be, err := a.audit.entryFor(actorAdmin, actionErase, b.Medium, b.Address, b.MXID, "binding removed")
			hashErr = errors.Join(hashErr, err)
			out = append(out, be)
		}
		return out
	}
	var removed db.Erased
	var err error
	if mxid != "" {
		removed, err = a.store.EraseUser(mxid, entries)
	} else {
		removed, err = a.store.Erase3PID(medium, address, entries)
	}
	if err == nil {
		err = hashErr
	}
	if err != nil {
		return EraseResult{}, errInternal(err)
	}
	r := EraseResult{Subject: subject, Removed: removed}
	if removed.Bindings == nil {
		r.Removed.Bindings = []db.Binding{}
	}
	for _, b := range removed.Bindings {
		if a.binds != nil {
			a.binds.Unbound(b.Medium, b.Address)
		}
		a.metrics.Unbind("erase")
	}
	a.metrics.Erased("admin", removed)
	if mxid != "" && a.forgetUser != nil {
		a.forgetUser(mxid)
	}
	// The 3PIDs erased: the user's bindings, or the address (whose
	// binding may have gone before, leaving changes behind).
	tps := [][2]string{}
	erased := removed.Bindings
	if mxid == "" {
		erased = []db.Binding{{Medium: medium, Address: address}}
	}
	for _, b := range erased {
		tps = append(tps, [2]string{b.Medium, b.Address})
	}
	if a.budgets != nil {
		if r.Budgets, err = a.budgets.ForgetBudgets(erasedBudgetKeys(mxid, erased)); err != nil {
			return r, errInternal(fmt.Errorf("erased, but forgetting the rate-limit budgets failed: %w", err))
		}
	}
	if r.Traces, err = a.forget(ctx, tps); err != nil {
		return r, errInternal(fmt.Errorf("erased, but the traces in the store are not removed: %w", err))
	}
	a.log.Info("admin: erased", "user", mxid, "medium", medium, "removed", removed.String(), "budgets", r.Budgets, "traces", r.Traces)
	return r, nil
}

// forget removes the traces removed data leaves in the store: bbolt's free
// pages (scrubbed now, or by the next retention sweep when a read is under
// way), PostgreSQL's change log (once the replicas had time to follow it).
func (a *Admin) forget(ctx context.Context, tps [][2]string) (string, error) {
	switch st := a.store.(type) {
	case interface {
		ScrubFreePages() (db.ScrubReport, error)
	}:
		// Reads are short (lookups answer from memory): a few tries.
		for try := 0; ; try++ {
			r, err := st.ScrubFreePages()
			if err != nil {
				return "", err
			}
			if !r.Deferred {
				return fmt.Sprintf("scrubbed (%d free pages zeroed)", r.Zeroed), nil
			}
			if try == 20 {
				a.owed.Store(true)
				return "scrub deferred: a read (a backup?) is under way; the retention sweep scrubs within 10 minutes", nil
			}
			select {
			case <-ctx.Done():
				a.owed.Store(true)
				return "scrub deferred to the retention sweep", nil
			case <-time.After(50 * time.Millisecond):
			}
		}
	case interface {
		ForgetChanges(threepids [][2]string) (int, error)
	}:
		if len(tps) == 0 {
			return "nothing in the change log", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(a.forgetAfter):
		}
		n, err := st.ForgetChanges(tps)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("change log forgotten (%d changes)", n), nil
	}
	return "", nil
}

// scrubOwed scrubs the free pages an erasure could not scrub at once.
func (a *Admin) scrubOwed() {
	st, ok := a.store.(interface {
		ScrubFreePages() (db.ScrubReport, error)
	})
	if !ok || !a.owed.Load() {
		return
	}
	r, err := st.ScrubFreePages()
	switch {
	case err != nil:
		a.log.Error("scrubbing the free pages after an erasure", "err", err)
	case r.Deferred:
		a.log.Info("scrubbing the free pages after an erasure: a read is under way; trying again at the next sweep")
	default:
		a.owed.Store(false)
		a.log.Info("scrubbed the free pages after an erasure", "zeroed", r.Zeroed)
	}
}

// Invites lists the stored invites, all or those of one address.
func (a *Admin) Invites(address string) ([]InviteView, error) {
	r, err := a.invites(address)
	return r, a.counted("invites", err)
}

func (a *Admin) invites(raw string) ([]InviteView, error) {
	var f db.InviteFilter
	if raw != "" {
		var err error
		if f.Medium, f.Address, err = ParseAddress(raw); err != nil {
			return nil, err
		}
	}
	invs, err := a.store.Invites(f)
	if err != nil {
		return nil, errInternal(err)
	}
	return inviteViews(invs), nil
}

// Queue lists the queued onbind deliveries, due first.
func (a *Admin) Queue() ([]JobView, error) {
	jobs, err := a.store.Jobs()
	if err != nil {
		return nil, a.counted("queue", errInternal(err))
	}
	out := make([]JobView, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, jobView(j))
	}
	return out, a.counted("queue", nil)
}

func jobView(j db.Job) JobView {
	_, _, mxid := db.JobSubject(j.Body)
	return JobView{ID: j.ID, Destination: j.Destination, MXID: mxid, Invites: len(j.InviteTokens), Attempts: j.Attempts,
		DueTS: j.DueTS, CreatedTS: j.CreatedTS, LastError: j.LastError}
}

// RetryJob makes a queued delivery due now with a fresh count of attempts.
func (a *Admin) RetryJob(id uint64) (JobView, error) {
	e := a.audit.entry(actorAdmin, actionQueueRetry, "", fmt.Sprintf("job %d", id))
	j, err := a.store.RescheduleJob(id, a.now().UnixMilli(), e)
	if err == nil {
		a.log.Info("admin: onbind delivery due now", "job", id, "destination", j.Destination)
	}
	return jobView(j), a.counted("queue_retry", jobError(id, err))
}

// DropJob gives up a queued delivery; its invites are pending again.
func (a *Admin) DropJob(id uint64) (JobView, error) {
	j, err := a.store.DropJobByID(id, a.audit.entry(actorAdmin, actionQueueDrop, "", fmt.Sprintf("job %d", id)))
	if err == nil {
		a.log.Info("admin: onbind delivery dropped", "job", id, "destination", j.Destination)
	}
	return jobView(j), a.counted("queue_drop", jobError(id, err))
}

func jobError(id uint64, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, db.ErrNotFound):
		return errNotFound("no queued delivery has id %d (mxid admin queue lists them)", id)
	}
	return errInternal(err)
}

// Stats counts what the store holds.
func (a *Admin) Stats() (StatsResult, error) {
	r, err := a.stats()
	return r, a.counted("stats", err)
}

func (a *Admin) stats() (StatsResult, error) {
	c, err := a.store.Counts()
	if err != nil {
		return StatsResult{}, errInternal(err)
	}
	r := StatsResult{Store: a.store.Path(), Counts: map[string]int{}}
	for k, n := range c {
		r.Counts[string(k)] = n
	}
	r.QueueDepth = c[db.KindQueue]
	if a.index != nil {
		st := a.index()
		age := st.pepperAge.Seconds()
		r.IndexEntries, r.PepperAgeSeconds = &st.entries, &age
	}
	return r, nil
}

// Audit lists the audit entries since sinceMS, all or those of one address.
func (a *Admin) Audit(sinceMS int64, address string) ([]db.AuditEntry, error) {
	r, err := a.auditEntries(sinceMS, address)
	return r, a.counted("audit", err)
}

func (a *Admin) auditEntries(sinceMS int64, raw string) ([]db.AuditEntry, error) {
	q := db.AuditQuery{SinceMS: sinceMS}
	if raw != "" {
		medium, address, err := ParseAddress(raw)
		if err != nil {
			return nil, err
		}
		if q.AddressHash, err = a.audit.hash(medium, address); err != nil {
			return nil, errInternal(err)
		}
	}
	es, err := a.store.AuditEntries(q)
	if err != nil {
		return nil, errInternal(err)
	}
	if es == nil {
		es = []db.AuditEntry{}
	}
	return es, nil
}

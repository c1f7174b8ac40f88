package lookup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Deps are the collaborators main hands to New.
type Deps struct {
	Store Store
	// HTTPClient is built by the outbound policy (deadline, size cap,
	// address blocklist); used for forwarders and DNS-discovered servers.
	HTTPClient *http.Client
	// DNSServer ("host:port") is asked for SRV records.
	DNSServer string
	// Self lists the names this server is reached by (server_name, the
	// public base URL's host): DNS discovery never asks ourselves.
	Self   []string
	Logger *slog.Logger
	Now    func() time.Time
	// Observe, when set, is told of every source asked: the cascade's
	// sources by name ("local", "ldap", "dns", "forwarders") once per
	// lookup that reaches them, and the hash index ("index") once per
	// sha256 lookup request. Outcomes: "found" (at least one address
	// found), "not_found", "error", "timeout" (the source's deadline
	// passed), "skipped" (a remote source not asked: the requester may not
	// recurse). It counts requests, not addresses, so a 1,000-address
	// batch is one observation; it must be cheap (it runs on the hot path).
	Observe func(source, outcome string, d time.Duration)
	// SyncDone, when set, is told the outcome of every directory sync the
	// background loop runs, after the index has taken it in (tests wait on
	// it).
	SyncDone func(err error)
	// Directory is the [directory] section: when enabled, the sync reads
	// display names and Search answers the user directory search.
	Directory DirectoryConfig
	// RunOnce, when set (several replicas share the store), is handed the
	// background jobs that only one replica may run, the pepper rotation
	// and the directory sync, by Start, which then runs only what every
	// replica runs (forgetting the previous pepper after its grace period).
	// The caller runs each job while this replica leads, with a context
	// that ends when it stops leading, and waits for them before closing
	// the store. nil: Start runs them itself.
	RunOnce func(name string, job func(ctx context.Context))
}

// Service is everything lookups need, wired: the hash index, the cascade
// and the background work (rotation, directory sync).
type Service struct {
	Index *Index
	Chain *Chain
	LDAP  *LDAP // nil without a directory
	// Search is the directory search's index, nil unless [directory] is
	// enabled.
	Search *SearchIndex

	cfg      Config
	ldapCfg  LDAPConfig
	dirCfg   DirectoryConfig
	store    Store
	cidrs    []netip.Prefix
	log      *slog.Logger
	syncDone func(error)
	runOnce  func(name string, job func(ctx context.Context))
	wg       sync.WaitGroup
}

// New builds the lookup service from validated configuration and builds
// the index over the local bindings and the stored directory snapshot
// before it returns.
func New(cfg Config, ldapCfg LDAPConfig, dnsCfg DNSConfig, forwarders []ForwarderConfig, d Deps) (*Service, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	s := &Service{cfg: cfg, ldapCfg: ldapCfg, dirCfg: d.Directory, store: d.Store, log: d.Logger, syncDone: d.SyncDone, runOnce: d.RunOnce}
	for _, c := range cfg.RecursionCIDRs {
		p, err := ParsePrefix(c)
		if err != nil {
			return nil, err
		}
		s.cidrs = append(s.cidrs, p)
	}
	links := []*Link{{Source: Local{Store: d.Store}, Deadline: cfg.Deadlines.Local}}
	var dirs []Directory
	if ldapCfg.Enabled() {
		l, err := NewLDAP(ldapCfg, cfg.Deadlines.LDAP, d.Logger)
		if err != nil {
			return nil, err
		}
		s.LDAP = l
		links = append(links, &Link{Source: l, Deadline: cfg.Deadlines.LDAP})
		if ldapCfg.SyncInterval > 0 {
			if err := l.useStore(d.Store, d.Now, d.RunOnce != nil); err != nil {
				return nil, err
			}
			dirs = append(dirs, l)
			if d.Directory.Enabled {
				l.useNames(d.Directory)
				s.Search = &SearchIndex{}
			}
		}
	}
	if d.Directory.Enabled && s.Search == nil {
		return nil, errors.New("[directory] needs an [ldap] directory with sync_interval > 0")
	}
	if (s.LDAP == nil || ldapCfg.SyncInterval == 0) && d.RunOnce == nil {
		if err := dropStaleSnapshot(d.Store, d.Logger); err != nil {
			return nil, err
		}
	}
	if dnsCfg.Enabled {
		links = append(links, &Link{Source: NewDNS(dnsCfg, d.DNSServer, d.HTTPClient, d.Self, d.Now), Deadline: cfg.Deadlines.DNS, Remote: true})
	}
	if len(forwarders) > 0 {
		links = append(links, &Link{Source: NewForwarders(forwarders, d.HTTPClient), Deadline: cfg.Deadlines.Forwarders, Remote: true})
	}
	s.Chain = NewChain(d.Logger, links...)
	s.Chain.observe = d.Observe
	idx, err := NewIndex(IndexOptions{
		Store: d.Store, Directories: dirs, Rotation: cfg.PepperRotation, Grace: cfg.PepperGrace,
		Fixed: cfg.Pepper, Now: d.Now, Logger: d.Logger, Observe: d.Observe,
	})
	if err != nil {
		return nil, err
	}
	s.Index = idx
	if err := s.loadSearch(true); err != nil {
		return nil, err
	}
	return s, nil
}

// Directory is the [directory] section the service was built with.
func (s *Service) Directory() DirectoryConfig { return s.dirCfg }

// loadSearch rebuilds the search index from the display names stored with
// the directory snapshot, unless they were read with other [directory]
// settings (they are then stored again by the next sync). atStart checks
// that the store holds the names the summary promised.
func (s *Service) loadSearch(atStart bool) error {
	if s.Search == nil {
		return nil
	}
	sum := s.LDAP.stored()
	var people []Person
	if sum.Names == s.LDAP.names.key {
		err := s.store.ScanDirectoryNames(func(mxid, name []byte) error {
			people = append(people, Person{UserID: string(mxid), DisplayName: string(name)})
			return nil
		})
		if err != nil {
			return fmt.Errorf("directory search: reading the display names: %w", err)
		}
	} else if sum.Count > 0 && atStart {
		s.log.Warn("directory search: the stored display names were read with other [directory] settings (or none); the search finds nobody until the first sync")
	}
	if atStart && sum.Names == s.LDAP.names.key && s.LDAP.namesMissing(len(people)) {
		s.log.Warn("directory search: the store holds fewer display names than its snapshot says; the next sync stores them again", "stored", len(people), "expected", sum.NamesCount)
	}
	s.Search.Replace(people)
	return nil
}

// Config is the [lookup] section the service was built with.
func (s *Service) Config() Config { return s.cfg }

// MayRecurse reports whether a requester may have its lookups passed on to
// other identity servers.
func (s *Service) MayRecurse(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.cidrs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Start runs the background work (pepper rotation, directory sync) until
// ctx ends; Wait waits for it to stop. With Deps.RunOnce, rotation and sync
// are handed to it, and Start runs only the expiry of the previous pepper.
func (s *Service) Start(ctx context.Context) {
	syncing := s.LDAP != nil && s.ldapCfg.SyncInterval > 0
	if s.runOnce != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.Index.Expire(ctx) }()
		s.runOnce("pepper rotation", s.Index.Run)
		if syncing {
			s.runOnce("directory sync", s.syncLoop)
		} else {
			s.runOnce("stale directory snapshot", s.dropStaleSnapshot)
		}
		return
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.Index.Run(ctx) }()
	if syncing {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.syncLoop(ctx) }()
	}
}

// dropStaleSnapshot is the leader's job when it has no directory sync: a
// snapshot stored while it had one is removed, as nothing would refresh it.
func (s *Service) dropStaleSnapshot(context.Context) {
	if err := dropStaleSnapshot(s.store, s.log); err != nil {
		s.log.Error("ldap: dropping the stale directory snapshot failed", "err", err)
	}
}

// DirectoryChanged takes in a directory snapshot another replica stored
// (the leader's sync): the snapshot's summary is read again and the index
// rebuilt over it. A snapshot this replica stored itself (its own Sync
// rebuilt the index already) changes nothing.
func (s *Service) DirectoryChanged(ctx context.Context) error {
	if s.LDAP == nil || s.LDAP.store == nil {
		return nil // no directory here: the index holds none
	}
	changed, err := s.LDAP.reloadSummary()
	if err != nil || !changed {
		return err
	}
	start := time.Now()
	if err := s.Index.Refresh(ctx); err != nil {
		return err
	}
	if err := s.loadSearch(false); err != nil {
		return err
	}
	sum := s.LDAP.stored()
	s.log.Info("ldap: took in the directory snapshot another replica stored", "threepids", sum.Count, "stored", s.LDAP.storedAt(sum), "duration_ms", time.Since(start).Milliseconds())
	return nil
}

// Wait waits for the background work started by Start to end.
func (s *Service) Wait() { s.wg.Wait() }

// Close releases connections.
func (s *Service) Close() {
	if s.LDAP != nil {
		s.LDAP.Close()
	}
}

func (s *Service) syncLoop(ctx context.Context) {
	for {
		err := s.Sync(ctx)
		if ctx.Err() != nil {
			return
		}
		if s.syncDone != nil {
			s.syncDone(err)
		}
		t := time.NewTimer(s.ldapCfg.SyncInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Sync reads the directory once (as the background loop does every
// sync_interval), stores the snapshot when it changed and rebuilds the
// index over it. A failed sync keeps the stored snapshot in use. Both are
// logged.
func (s *Service) Sync(ctx context.Context) error {
	if s.LDAP == nil {
		return errors.New("no [ldap] directory")
	}
	start := time.Now()
	changed, n, err := s.LDAP.Sync(ctx)
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		sum := s.LDAP.stored()
		s.log.Error("ldap sync failed; lookups keep the stored directory snapshot", "threepids", sum.Count, "stored", s.LDAP.storedAt(sum), "err", err)
		return err
	}
	if changed {
		if err := s.Index.Refresh(ctx); err != nil {
			if ctx.Err() == nil {
				s.log.Error("lookup index rebuild failed", "err", err)
			}
			return err
		}
		if err := s.loadSearch(false); err != nil {
			s.log.Error("directory search index rebuild failed", "err", err)
			return err
		}
	}
	attrs := []any{"threepids", n, "changed", changed, "duration_ms", time.Since(start).Milliseconds()}
	if s.Search != nil {
		attrs = append(attrs, "searchable", s.Search.Len())
	}
	s.log.Info("ldap sync done", attrs...)
	return nil
}

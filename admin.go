package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"mxid/db"
	"mxid/server"
)

// `mxid admin`: the operator's tools (server/admin_actions.go). They ask
// the running server through its admin socket (data_dir/admin.sock, mode
// 0600); with no server running they act on the store themselves: the
// bbolt file when no process holds it, PostgreSQL always (the replicas
// follow the change log).

// adminCommands are mxid admin's subcommands, in the order help lists them.
var adminCommands = []struct{ name, args, about string }{
	{"show", "ADDRESS", "what mxid holds about an email address or phone number (+44 …): bindings, invites, sessions"},
	{"unbind", "ADDRESS", "remove the address's binding (every replica's lookups forget it)"},
	{"erase", "@user:server | ADDRESS", "remove everything about a user (bindings, pending invites sent, tokens, sessions) or an address"},
	{"invites", "[ADDRESS]", "list stored invites, all or an address's"},
	{"queue", "[retry ID | drop ID]", "list the onbind deliveries waiting; deliver one now, or give it up"},
	{"stats", "", "count what the store holds; the running server's index size and pepper age"},
	{"audit", "[-since T] [-address ADDRESS]", "list the audit log (who removed what, when), all or an address's"},
}

func adminUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: mxid admin [-config PATH] [-json] COMMAND [ARGS]\n  the operator's tools, through the running server's admin socket (or on the store when none runs):\n")
	for _, c := range adminCommands {
		fmt.Fprintf(w, "  mxid admin %-40s %s\n", strings.TrimSpace(c.name+" "+c.args), c.about)
	}
	fmt.Fprintf(w, "  -json prints the answer as JSON (for scripts); -since takes a time (2025-01-31, 2025-01-31T12:00:00Z) or an age (90d, 12h)\n")
}

// adminFlags are the flags every mxid admin subcommand takes.
type adminFlags struct {
	config  *string
	json    *bool
	since   *string
	address *string
}

func newAdminFlags(name string, stdout io.Writer) (*flag.FlagSet, adminFlags) {
	fs := flag.NewFlagSet("admin "+name, flag.ContinueOnError)
	fs.Usage = func() { adminUsage(fs.Output()) }
	f := adminFlags{config: configFlag(fs), json: fs.Bool("json", false, "print the answer as JSON")}
	if name == "audit" {
		f.since = fs.String("since", "", "only entries from this time on: 2025-01-31, 2025-01-31T12:00:00Z, or an age (90d, 12h)")
		f.address = fs.String("address", "", "only the entries about this address")
	}
	return fs, f
}

// cmdAdmin is `mxid admin`.
func cmdAdmin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	// Flags before the subcommand (-config, -json) and after it are one
	// set: split at the first word that is not a flag or a flag's value.
	var lead []string
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		if isHelpFlag(args[0]) {
			adminUsage(stdout)
			return errHelp
		}
		lead = append(lead, args[0])
		if (args[0] == "-config" || args[0] == "--config") && len(args) > 1 {
			lead = append(lead, args[1])
			args = args[1:]
		}
		args = args[1:]
	}
	if len(args) == 0 {
		adminUsage(stderr)
		return usageError{errors.New("mxid admin needs a command")}
	}
	name := args[0]
	known := false
	for _, c := range adminCommands {
		known = known || c.name == name
	}
	if !known {
		fmt.Fprintf(stderr, "mxid admin: unknown command %q\n", name)
		adminUsage(stderr)
		return usageError{fmt.Errorf("unknown admin command %q", name)}
	}
	fs, f := newAdminFlags(name, stdout)
	if err := parseArgs(fs, append(lead, args[1:]...), stdout, stderr); err != nil {
		return err
	}
	cfg, _, err := resolveConfig(*f.config)
	if err != nil {
		return err
	}
	req, err := adminRequestOf(name, fs.Args(), f, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "mxid admin %s: %v\n", name, err)
		return usageError{err}
	}
	out, err := runAdmin(ctx, cfg, req)
	if err != nil {
		if *f.json {
			var ae *adminError
			if errors.As(err, &ae) {
				json.NewEncoder(stdout).Encode(map[string]string{"errcode": ae.code, "error": ae.msg})
			}
		}
		return err
	}
	if *f.json {
		return writeIndentedJSON(stdout, out)
	}
	printAdmin(stdout, req, out)
	return nil
}

// adminRequest is one admin action: its socket call and its answer's type.
type adminRequest struct {
	name   string
	method string
	path   string // with its query
	body   map[string]any
	answer any // a pointer to the answer's type
	// direct performs it on an Admin (no server running).
	direct func(ctx context.Context, a *server.Admin) (any, error)
}

func adminRequestOf(name string, args []string, f adminFlags, now time.Time) (adminRequest, error) {
	want := func(n int, what string) error {
		if len(args) != n {
			return fmt.Errorf("needs %s", what)
		}
		return nil
	}
	r := adminRequest{name: name, method: http.MethodGet}
	switch name {
	case "show":
		if err := want(1, "one ADDRESS"); err != nil {
			return r, err
		}
		r.path, r.answer = "/admin/show?address="+url.QueryEscape(args[0]), new(server.ShowResult)
		r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.Show(args[0]) }
	case "unbind":
		if err := want(1, "one ADDRESS"); err != nil {
			return r, err
		}
		r.method, r.path, r.body, r.answer = http.MethodPost, "/admin/unbind", map[string]any{"address": args[0]}, new(server.UnbindResult)
		r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.Unbind(args[0]) }
	case "erase":
		if err := want(1, "one @user:server or ADDRESS"); err != nil {
			return r, err
		}
		r.method, r.path, r.body, r.answer = http.MethodPost, "/admin/erase", map[string]any{"subject": args[0]}, new(server.EraseResult)
		r.direct = func(ctx context.Context, a *server.Admin) (any, error) { return a.Erase(ctx, args[0]) }
	case "invites":
		if len(args) > 1 {
			return r, errors.New("takes at most one ADDRESS")
		}
		address := ""
		if len(args) == 1 {
			address = args[0]
		}
		r.path, r.answer = "/admin/invites?address="+url.QueryEscape(address), new([]server.InviteView)
		r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.Invites(address) }
	case "queue":
		switch {
		case len(args) == 0 || len(args) == 1 && args[0] == "list":
			r.path, r.answer = "/admin/queue", new([]server.JobView)
			r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.Queue() }
		case len(args) == 2 && (args[0] == "retry" || args[0] == "drop"):
			id, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil || id == 0 {
				return r, fmt.Errorf("%q is not a delivery id (mxid admin queue lists them)", args[1])
			}
			r.method, r.path, r.body, r.answer = http.MethodPost, "/admin/queue/"+args[0], map[string]any{"id": id}, new(server.JobView)
			if args[0] == "retry" {
				r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.RetryJob(id) }
			} else {
				r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.DropJob(id) }
			}
		default:
			return r, errors.New(`takes nothing (list), "retry ID" or "drop ID"`)
		}
	case "stats":
		if err := want(0, "no argument"); err != nil {
			return r, err
		}
		r.path, r.answer = "/admin/stats", new(server.StatsResult)
		r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.Stats() }
	case "audit":
		if err := want(0, "no argument (-since T, -address ADDRESS)"); err != nil {
			return r, err
		}
		since, err := parseSince(*f.since, now)
		if err != nil {
			return r, err
		}
		q := url.Values{"address": {*f.address}}
		if since > 0 {
			q.Set("since", strconv.FormatInt(since, 10))
		}
		r.path, r.answer = "/admin/audit?"+q.Encode(), new([]db.AuditEntry)
		address := *f.address
		r.direct = func(_ context.Context, a *server.Admin) (any, error) { return a.Audit(since, address) }
	}
	return r, nil
}

// parseSince reads -since: a date, an RFC 3339 time, or an age ("90d",
// "12h", "30m"); "" is the beginning. It returns Unix milliseconds.
func parseSince(s string, now time.Time) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UnixMilli(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.UnixMilli(), nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour).UnixMilli(), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d).UnixMilli(), nil
	}
	return 0, fmt.Errorf("-since %q is not a date (2025-01-31), a time (2025-01-31T12:00:00Z) or an age (90d, 12h)", s)
}

// adminError is the server's refusal of an admin action, as it said it.
type adminError struct {
	code, msg string
}

func (e *adminError) Error() string { return e.msg }

// runAdmin performs the request through the running server's admin socket
// or, when none answers there, on the store itself.
func runAdmin(ctx context.Context, cfg Config, req adminRequest) (any, error) {
	socket := filepath.Join(cfg.DataDir, server.AdminSocketName)
	err := adminCall(ctx, socket, req.method, req.path, req.body, req.answer)
	if !errors.Is(err, errNoServer) {
		if err != nil {
			return nil, err
		}
		return derefAnswer(req.answer), nil
	}
	store, closeStore, err := openAdminStore(ctx, cfg, socket)
	if err != nil {
		return nil, err
	}
	defer closeStore()
	out, err := req.direct(ctx, server.NewAdmin(server.AdminDeps{Store: store}))
	var se *server.Error
	if errors.As(err, &se) {
		msg := se.Message
		if se.Status >= 500 && se.Cause != nil {
			msg += ": " + se.Cause.Error()
		}
		return nil, &adminError{code: se.Code, msg: msg}
	}
	return out, err
}

// derefAnswer turns the pointer a socket answer was decoded into back into
// the value an Admin returns.
func derefAnswer(p any) any {
	switch v := p.(type) {
	case *server.ShowResult:
		return *v
	case *server.UnbindResult:
		return *v
	case *server.EraseResult:
		return *v
	case *[]server.InviteView:
		return *v
	case *[]server.JobView:
		return *v
	case *server.JobView:
		return *v
	case *server.StatsResult:
		return *v
	case *[]db.AuditEntry:
		return *v
	}
	return p
}

// openAdminStore opens the store for an admin action with no server
// running: PostgreSQL, or the bbolt file when no process holds it.
func openAdminStore(ctx context.Context, cfg Config, socket string) (server.Store, func(), error) {
	if cfg.Database.Postgres() {
		store, err := openPostgres(ctx, cfg, slog.New(slog.DiscardHandler), false)
		if err != nil {
			return nil, nil, err
		}
		return store, func() { store.Close() }, nil
	}
	path := filepath.Join(cfg.DataDir, db.FileName)
	if _, err := os.Stat(path); err != nil {
		return nil, nil, fmt.Errorf("no mxid answers on %s and there is no database at %s: is -config the server's?", socket, path)
	}
	store, err := openStore(cfg.DataDir, slog.New(slog.DiscardHandler))
	if errors.Is(err, db.ErrInUse) {
		err = fmt.Errorf("%w: an mxid holds the database but its admin socket %s does not answer; is data_dir too long for a socket path?", err, socket)
	}
	if err != nil {
		return nil, nil, err
	}
	return store, func() { store.Close() }, nil
}

// adminClient talks HTTP over the admin socket.
func adminClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
}

// adminDo sends one request to the running server on its admin socket
// (mxid admin, backup, check-db) and returns its 200 answer, whose body is
// the caller's to close: errNoServer when none answers, a hint when the
// socket is not this user's, an *adminError when the server refused.
func adminDo(ctx context.Context, socket, method, path string, body map[string]any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(ctx, method, "http://mxid-admin"+path, rd)
	resp, err := adminClient(socket).Do(req)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil, errNoServer
	}
	if errors.Is(err, os.ErrPermission) {
		return nil, fmt.Errorf("admin socket %s: permission denied: run this command as the user mxid runs as (or root)", socket)
	}
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", socket, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct{ Errcode, Error string }
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return nil, &adminError{code: e.Errcode, msg: e.Error}
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("admin socket %s: the running mxid does not know %s: is it older than this mxid?", socket, path)
	}
	return nil, fmt.Errorf("admin socket %s answered %s %s", socket, resp.Status, bytes.TrimSpace(raw))
}

// adminCall sends one admin action to the running server and decodes its
// answer into answer (adminDo says what fails).
func adminCall(ctx context.Context, socket, method, path string, body map[string]any, answer any) error {
	resp, err := adminDo(ctx, socket, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err == nil {
		err = json.Unmarshal(raw, answer)
	}
	if err != nil {
		return fmt.Errorf("admin socket %s: reading the answer: %w", socket, err)
	}
	return nil
}

func writeIndentedJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// when is a Unix ms time for people: UTC, to the second.
func when(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02 15:04:05Z")
}

// printAdmin prints an answer for people.
func printAdmin(w io.Writer, req adminRequest, out any) {
	switch v := out.(type) {
	case server.ShowResult:
		fmt.Fprintf(w, "%s %s\n", v.Medium, v.Address)
		if len(v.Bindings) == 0 {
			fmt.Fprintln(w, "  not bound")
		}
		for _, b := range v.Bindings {
			if b.Source == "local" {
				fmt.Fprintf(w, "  bound to %s since %s\n", b.MXID, when(b.TS))
			} else {
				fmt.Fprintf(w, "  bound to %s in the LDAP directory\n", b.MXID)
			}
		}
		fmt.Fprintf(w, "  %s\n", plural(len(v.Invites), "invite", "invites"))
		printInvites(w, v.Invites, false)
		fmt.Fprintf(w, "  %s\n", plural(len(v.Sessions), "validation session", "validation sessions"))
		for _, s := range v.Sessions {
			state := "not validated"
			if s.ValidatedTS != 0 {
				state = "validated " + when(s.ValidatedTS)
			}
			fmt.Fprintf(w, "    sid %s: created %s, %s, usable until %s, removed at %s\n", s.SID, when(s.CreatedTS), state, when(s.ExpiresTS), when(s.SweptTS))
		}
	case server.UnbindResult:
		fmt.Fprintf(w, "unbound %s %s (was bound to %s)\n", v.Medium, v.Address, v.MXID)
	case server.EraseResult:
		fmt.Fprintf(w, "erased %s: %s\n", v.Subject, v.Removed.String())
		for _, b := range v.Removed.Bindings {
			fmt.Fprintf(w, "  unbound %s %s (was bound to %s)\n", b.Medium, b.Address, b.MXID)
		}
		fmt.Fprintf(w, "  rate-limit budgets forgotten: %d\n", v.Budgets)
		if v.Traces != "" {
			fmt.Fprintf(w, "  traces in the store: %s\n", v.Traces)
		}
	case []server.InviteView:
		fmt.Fprintf(w, "%s\n", plural(len(v), "invite", "invites"))
		printInvites(w, v, true)
	case []server.JobView:
		fmt.Fprintf(w, "%s waiting\n", plural(len(v), "onbind delivery", "onbind deliveries"))
		for _, j := range v {
			fmt.Fprintf(w, "  %d: to %s for %s, %s, %s, due %s, queued %s", j.ID, j.Destination, j.MXID, plural(j.Invites, "invite", "invites"),
				plural(j.Attempts, "attempt", "attempts"), when(j.DueTS), when(j.CreatedTS))
			if j.LastError != "" {
				fmt.Fprintf(w, ", last error: %s", j.LastError)
			}
			fmt.Fprintln(w)
		}
	case server.JobView:
		what := "due now"
		if req.path == "/admin/queue/drop" {
			what = "dropped (its invites are pending again)"
		}
		fmt.Fprintf(w, "delivery %d to %s: %s\n", v.ID, v.Destination, what)
	case server.StatsResult:
		fmt.Fprintf(w, "%s\n", v.Store)
		for _, k := range db.Kinds() {
			if n, ok := v.Counts[string(k)]; ok && k != db.KindSigningKey {
				fmt.Fprintf(w, "  %-24s %d\n", k, n)
			}
		}
		fmt.Fprintf(w, "  %-24s %d\n", "queue depth", v.QueueDepth)
		if v.IndexEntries != nil {
			fmt.Fprintf(w, "  %-24s %d\n", "lookup index entries", *v.IndexEntries)
		}
		if v.PepperAgeSeconds != nil {
			fmt.Fprintf(w, "  %-24s %s\n", "pepper age", (time.Duration(*v.PepperAgeSeconds) * time.Second).String())
		}
		if v.IndexEntries == nil {
			fmt.Fprintln(w, "  (no server running: no lookup index)")
		}
	case []db.AuditEntry:
		fmt.Fprintf(w, "%s\n", plural(len(v), "audit entry", "audit entries"))
		for _, e := range v {
			fmt.Fprintf(w, "  %s %s by %s", when(e.TS), e.Action, e.Actor)
			if e.MXID != "" {
				fmt.Fprintf(w, ", user %s", e.MXID)
			}
			if e.Medium != "" {
				fmt.Fprintf(w, ", %s %s…", e.Medium, e.AddressHash[:min(12, len(e.AddressHash))])
			}
			if e.Detail != "" {
				fmt.Fprintf(w, ": %s", e.Detail)
			}
			fmt.Fprintln(w)
		}
	}
}

func printInvites(w io.Writer, invs []server.InviteView, address bool) {
	for _, inv := range invs {
		to := ""
		if address {
			to = " to " + inv.Medium + " " + inv.Address + ","
		}
		state := inv.State
		if inv.State == "queued" {
			state = fmt.Sprintf("on its way (delivery %d)", inv.Job)
		}
		fmt.Fprintf(w, "    %s%s from %s, %s, stored %s, expires %s\n", inv.RoomID, to, inv.Sender, state, when(inv.CreatedTS), when(inv.ExpiresTS))
	}
}

// plural is "1 invite", "2 invites".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestVersionHelpAndUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"version"}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "mxid ") {
		t.Errorf("version: %v %q", err, out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"help"}, &out, &errb); err != nil || !strings.Contains(out.String(), "check-config") {
		t.Errorf("help: %v %q", err, out.String())
	}
	errb.Reset()
	if err := run(t.Context(), []string{"frobnicate"}, &out, &errb); err == nil || !strings.Contains(errb.String(), "unknown command") {
		t.Errorf("unknown command: %v %q", err, errb.String())
	}
	if err := run(t.Context(), []string{"serve", "extra"}, &out, &errb); err == nil {
		t.Error("serve accepted a stray argument")
	}
}

// With no -config and no ./mxid.toml, the embedded default applies.
func TestEmbeddedDefault(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg, source, err := resolveConfig("")
	if err != nil || source != "" {
		t.Fatalf("resolveConfig: %q %v", source, err)
	}
	if cfg.HTTP.Listen != "127.0.0.1:8090" || cfg.ServerName != "127.0.0.1:8090" || cfg.DataDir != "./mxid-data" || cfg.Config.V1 {
		t.Errorf("embedded default %+v", cfg)
	}
	// ./mxid.toml is picked up when present.
	writeFile(t, ".", "mxid.toml", "server_name = \"id.example.org\"\n")
	cfg, source, err = resolveConfig("")
	if err != nil || source != "mxid.toml" || cfg.ServerName != "id.example.org" {
		t.Errorf("with ./mxid.toml: %q %q %v", cfg.ServerName, source, err)
	}
}

// syncWriter lets the test read what the server logs while it runs.
type syncWriter struct{ w *io.PipeWriter }

func (s syncWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

// serve runs `mxid serve -config path` and returns its base URL, a stop
// function and the channel run's result arrives on.
func serve(t *testing.T, path string) (string, context.CancelFunc, chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "-config", path}, io.Discard, syncWriter{pw})
		pw.Close()
	}()
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`serving plain HTTP.* listen=(http://\S+)`)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case base := <-addr:
		return base, cancel, done
	case err := <-done:
		cancel()
		t.Fatalf("serve ended before serving: %v", err)
	case <-time.After(time.Minute): // a hang, not a slow machine
		cancel()
		t.Fatal("serve did not start within a minute")
	}
	return "", cancel, done
}

func TestServeAndGracefulShutdown(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "mxid.toml", `
server_name = "id.example.org"
public_base_url = "https://id.example.org"
data_dir = "`+dir+`/data"
[http]
listen = "127.0.0.1:0"
`)
	base, stop, done := serve(t, path)
	resp, err := http.Get(base + "/_matrix/identity/v2/pubkey/ed25519:0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("pubkey: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	st, err := os.Stat(dir + "/data/signing.key")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("signing key: %v %v", err, st)
	}

	// A second mxid on the same data directory stops with a clear error.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newApp(cfg, log); err == nil || !strings.Contains(err.Error(), "another mxid is using") {
		t.Errorf("second instance: %v", err)
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve returned %v after shutdown", err)
		}
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Fatal("serve did not stop within a minute")
	}
	// The store was closed: it opens again.
	app, err := newApp(cfg, log)
	if err != nil {
		t.Fatalf("reopen after shutdown: %v", err)
	}
	app.close()
}

// Every command and every check answers -h, -help and --help with its usage on
// stdout and success; a flag it does not know is still an error.
func TestHelpEverywhere(t *testing.T) {
	var invocations [][]string
	for _, c := range commands() {
		invocations = append(invocations, []string{c.name})
	}
	for name := range checkCommands() {
		invocations = append(invocations, []string{"check", name})
	}
	for _, inv := range invocations {
		for _, flag := range []string{"-h", "-help", "--help"} {
			args := append(slices.Clone(inv), flag)
			var out, errb bytes.Buffer
			err := run(t.Context(), args, &out, &errb)
			if err != nil || !strings.Contains(strings.ToLower(out.String()), "usage") {
				t.Errorf("mxid %s: %v; stdout %q, stderr %q", strings.Join(args, " "), err, out.String(), errb.String())
			}
		}
		args := append(slices.Clone(inv), "-no-such-flag")
		var out, errb bytes.Buffer
		if err := run(t.Context(), args, &out, &errb); err == nil {
			t.Errorf("mxid %s succeeded", strings.Join(args, " "))
		}
	}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}, {"help", "backup"}, {"help", "check"}} {
		var out, errb bytes.Buffer
		if err := run(t.Context(), args, &out, &errb); err != nil || !strings.Contains(strings.ToLower(out.String()), "usage") {
			t.Errorf("mxid %s: %v; stdout %q", strings.Join(args, " "), err, out.String())
		}
	}
	// A bad flag explains itself on stderr.
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"backup", "-frobnicate", "x"}, &out, &errb); err == nil ||
		!strings.Contains(errb.String(), "flag provided but not defined: -frobnicate") || !strings.Contains(errb.String(), "usage: mxid backup") || out.Len() > 0 {
		t.Errorf("bad flag: %v; stdout %q, stderr %q", err, out.String(), errb.String())
	}
}

// README's "Commands" block is what `mxid help` prints.
func TestReadmeCommands(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, _ := strings.Cut(string(readme), "## Commands\n\n```\n")
	block, _, _ = strings.Cut(block, "```")
	normalize := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	var lines []string
	for l := range strings.Lines(block) {
		lines = append(lines, normalize(l))
	}
	for _, l := range usageLines() {
		if !slices.Contains(lines, normalize(l)) {
			t.Errorf("README's Commands block lacks %q", normalize(l))
		}
	}
	if len(lines) != len(usageLines()) {
		t.Errorf("README's Commands block has %d lines, mxid help %d", len(lines), len(usageLines()))
	}
}

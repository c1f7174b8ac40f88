package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mxid/lookup/threepid"
)

func TestImport(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "mxid.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("data_dir = %q\n", filepath.Join(dir, "data"))), 0o600)
	lines := []string{
		`{"medium":"email","address":"Alice@Example.ORG","mxid":"@alice:example.org","ts":1600000000000}`, // 1: canonicalised
		`{"medium":"msisdn","address":"447700900001","mxid":"@bob:example.org"}`,                          // 2
		``, // 3: blank
		`{"medium":"msisdn","address":"+44 7700 900002","mxid":"@carol:example.org"}`, // 4: normalised
		`{"medium":"email","address":"a@b.com, c@d.com","mxid":"@x:example.org"}`,     // 5: two addresses
		`{"medium":"email","address":"dave@example.org","mxid":"dave"}`,               // 6: not an mxid
		`{"medium":"fax","address":"123","mxid":"@x:example.org"}`,                    // 7: medium
		`{"medium":"email","address":"eve@example.org"}`,                              // 8: no mxid
		`not json`, // 9
		`{"medium":"email","address":"f@example.org","mxid":"@f:example.org","extra":1}`, // 10: unknown key
		`{"medium":"email","address":"g@example.org","mxid":"@g:example.org","ts":-5}`,   // 11: bad ts
		`{"medium":"email","address":"g@example.org","mxid":"@g:exa mple.org"}`,          // 12: bad server name
		`{"medium":"email","address":"h@example.org","mxid":"@h:example.org"} {}`,        // 13: two values
	}
	file := filepath.Join(dir, "bindings.jsonl")
	os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"import", "-config", cfgPath, file}, &stdout, &stderr)
	if err == nil {
		t.Error("import with rejected lines should exit non-zero")
	}
	if !strings.Contains(stdout.String(), "13 lines: 3 bindings imported, 9 rejected, 1 blank") {
		t.Errorf("summary: %q", stdout.String())
	}
	for _, n := range []int{5, 6, 7, 8, 9, 10, 11, 12, 13} {
		if !strings.Contains(stderr.String(), fmt.Sprintf("line %d: ", n)) {
			t.Errorf("line %d not reported: %s", n, stderr.String())
		}
	}
	for _, n := range []int{1, 2, 3, 4} {
		if strings.Contains(stderr.String(), fmt.Sprintf("line %d: ", n)) {
			t.Errorf("line %d wrongly reported: %s", n, stderr.String())
		}
	}
	// The imported bindings are there, canonical, and the index finds them.
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	b, err := a.store.GetBinding("email", "alice@example.org")
	if err != nil || b.MXID != "@alice:example.org" || b.TS != 1600000000000 {
		t.Errorf("alice: %+v, %v", b, err)
	}
	p := a.lookup.Index.Pepper()
	got, _ := a.lookup.Index.LookupHashes(p, []string{
		threepid.Hash("alice@example.org", "email", p), threepid.Hash("447700900002", "msisdn", p), threepid.Hash("447700900001", "msisdn", p),
	})
	if strings.Join(got, ",") != "@alice:example.org,@carol:example.org,@bob:example.org" {
		t.Errorf("index after import: %q", got)
	}
	// -n checks without storing; a clean file exits 0.
	os.WriteFile(file, []byte(lines[0]+"\n"), 0o600)
	stdout.Reset()
	if err := run(context.Background(), []string{"import", "-n", "-config", cfgPath, file}, &stdout, &stderr); err != nil || !strings.Contains(stdout.String(), "1 bindings valid") {
		t.Errorf("dry run: %v %q", err, stdout.String())
	}
}

// The example configuration is valid and says what the defaults are.
func TestExampleConfigLookupSections(t *testing.T) {
	cfg, err := loadConfig("mxid.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultConfig()
	if fmt.Sprint(cfg.Lookup) != fmt.Sprint(def.Lookup) || fmt.Sprint(cfg.LDAP) != fmt.Sprint(def.LDAP) || fmt.Sprint(cfg.DNS) != fmt.Sprint(def.DNS) {
		t.Errorf("mxid.toml.example differs from the defaults:\n%+v\n%+v\n%+v\n%+v", cfg.Lookup, def.Lookup, cfg.LDAP, def.LDAP)
	}
}

// The load benchmark's generated bindings are what `mxid import` accepts.
func TestBenchBindingsImport(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "b.jsonl")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"bench-lookup", "-gen", file, "-n", "500"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "mxid.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("data_dir = %q\n", filepath.Join(dir, "data"))), 0o600)
	out.Reset()
	if err := run(context.Background(), []string{"import", "-n", "-config", cfgPath, file}, &out, &out); err != nil || !strings.Contains(out.String(), "500 bindings valid") {
		t.Errorf("%v: %s", err, out.String())
	}
}

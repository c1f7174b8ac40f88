package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckConfigMisspelledKey(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "mxid.toml", `
server_name = "id.example.org"
public_base_url = "https://id.example.org"
data_dir = "`+dir+`"
[http]
lisen = "127.0.0.1:9000"
[outbound]
timout = "5s"
`)
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"check-config", "-config", path}, &stdout, &stderr)
	if err == nil {
		t.Fatalf("check-config accepted a misspelled key; stdout %s", stdout.String())
	}
	out := stderr.String()
	for _, want := range []string{`unknown key "http.lisen" (did you mean "http.listen"?)`, `unknown key "outbound.timout" (did you mean "outbound.timeout"?)`} {
		if !strings.Contains(out, want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out)
		}
	}
}

func TestCheckConfigReportsEveryProblem(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "mxid.toml", `
server_name = "not a name"
public_base_url = "ftp://x"
[http]
listen = "nowhere"
max_body_bytes = 1
read_timeout = "0s"
[log]
level = "loud"
[outbound]
allow_cidrs = ["10.0.0.0/99"]
[[terms.policy]]
name = "privacy"
version = ""
`)
	_, err := loadConfig(path)
	ce, ok := err.(*ConfigError)
	if !ok {
		t.Fatalf("loadConfig error %v is not a *ConfigError", err)
	}
	text := ce.Error()
	for _, want := range []string{"server_name", "public_base_url", "http.listen", "http.max_body_bytes", "http.read_timeout", "log.level", "outbound.allow_cidrs", "version is required", "languages"} {
		if !strings.Contains(text, want) {
			t.Errorf("problems do not mention %s:\n%s", want, text)
		}
	}
	if len(ce.Problems) < 9 {
		t.Errorf("%d problems reported, want every one (>= 9):\n%s", len(ce.Problems), text)
	}
}

func TestCheckConfigGoodFileAndSecretFiles(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "ok.toml", `
server_name = "id.example.org"
public_base_url = "https://id.example.org"
[[terms.policy]]
name = "privacy_policy"
version = "1.0"
[terms.policy.languages.en]
name = "Privacy Policy"
url = "https://id.example.org/privacy.html"
`)
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"check-config", "-config", path}, &stdout, &stderr); err != nil {
		t.Fatalf("check-config: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "configuration OK") {
		t.Errorf("stdout %q", stdout.String())
	}
	if err := run(t.Context(), []string{"check-config", "-config", filepath.Join(dir, "missing.toml")}, &stdout, &stderr); err == nil {
		t.Error("a missing config file was accepted")
	}
}

// resolveSecretFiles is generic: any string key X with a sibling X_file.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	secret := writeFile(t, dir, "secret", "s3cr3t\n")
	type section struct {
		Password     string `toml:"password"`
		PasswordFile string `toml:"password_file"`
		CAFile       string `toml:"ca_file"`
	}
	type cfg struct {
		A section   `toml:"a"`
		B []section `toml:"b"`
	}
	c := cfg{A: section{PasswordFile: secret, CAFile: "/not/read"}, B: []section{{PasswordFile: secret}, {Password: "x", PasswordFile: secret}}}
	errs := resolveSecretFiles(reflect.ValueOf(&c).Elem(), "")
	if c.A.Password != "s3cr3t" || c.B[0].Password != "s3cr3t" {
		t.Errorf("secrets not read: %+v", c)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "b[1].password and b[1].password_file are both set") {
		t.Errorf("errors %v, want one about b[1] setting both", errs)
	}
	c = cfg{A: section{PasswordFile: filepath.Join(dir, "nope")}}
	if errs := resolveSecretFiles(reflect.ValueOf(&c).Elem(), ""); len(errs) != 1 {
		t.Errorf("a missing secret file gave %v", errs)
	}
}

// mxid.toml.example lists every key with its default: with its commented
// examples left out it decodes to exactly DefaultConfig, and every key mxid
// knows appears in it (set, or in a commented example).
func TestExampleConfigMatchesDefaults(t *testing.T) {
	data, err := os.ReadFile("mxid.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig("mxid.toml.example"); err != nil {
		t.Errorf("mxid.toml.example does not load as a configuration: %v", err)
	}
	var got Config
	md, err := toml.Decode(string(data), &got)
	if err != nil {
		t.Fatalf("mxid.toml.example does not parse: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("mxid.toml.example has unknown keys: %v", u)
	}
	want := DefaultConfig()
	if !reflect.DeepEqual(normalise(got), normalise(want)) {
		t.Errorf("mxid.toml.example differs from the defaults:\nexample:  %+v\ndefaults: %+v", got, want)
	}
	set := map[string]bool{}
	for _, k := range md.Keys() {
		set[k.String()] = true
	}
	commented := map[string]bool{}
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		if m := regexp.MustCompile(`^\[\[?([a-z_.]+)\]\]?$`).FindStringSubmatch(line); m != nil {
			section = m[1] + "."
			parts := strings.Split(m[1], ".")
			for i := range parts {
				commented[strings.Join(parts[:i+1], ".")] = true
			}
			continue
		}
		if m := regexp.MustCompile(`^"?([a-z_]+)"? = `).FindStringSubmatch(line); m != nil {
			commented[section+m[1]] = true
		}
	}
	for _, k := range knownKeys(reflect.TypeOf(Config{})) {
		if set[k] || commented[k] || strings.Contains(k, "*") {
			continue
		}
		if commented[strings.ReplaceAll(k, ".*", "")] {
			continue
		}
		t.Errorf("key %q is not in mxid.toml.example", k)
	}
}

// normalise makes nil and empty slices and maps compare equal.
func normalise(c Config) string {
	var b bytes.Buffer
	toml.NewEncoder(&b).Encode(c)
	return regexp.MustCompile(`(?m)^.* = \[\]\n`).ReplaceAllString(b.String(), "")
}

func TestKnownKeysAndSuggest(t *testing.T) {
	known := knownKeys(reflect.TypeOf(Config{}))
	for _, want := range []string{"server_name", "http.listen", "outbound.pins", "terms.policy.*.languages.*.url"} {
		found := false
		for _, k := range known {
			found = found || k == want
		}
		if !found {
			t.Errorf("knownKeys lacks %s", want)
		}
	}
	for in, want := range map[string]string{
		"sever_name": "server_name", "http.listn": "http.listen", "outbound.allow_cidr": "outbound.allow_cidrs",
		"terms.policy.0.languages.en.ulr": "terms.policy.0.languages.en.url", "completely_unrelated_thing": "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

// A server_name that is not what clients call mxid is valid but will not
// work with Dendrite: check-config says so (and still exits 0), and serve
// logs it at WARN when it starts.
func TestServerNameMismatchWarning(t *testing.T) {
	dir := t.TempDir()
	config := fmt.Sprintf(`server_name = "localhost"
public_base_url = "http://localhost:18290"
data_dir = %q
[http]
listen = "127.0.0.1:%d"
`, filepath.Join(dir, "data"), freePort(t))
	path := writeFile(t, dir, "mxid.toml", config)
	const why = `homeservers verify signatures under the name users type as their identity server, "localhost:18290"`
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"check-config", "-config", path}, &stdout, &stderr); err != nil {
		t.Fatalf("check-config failed on a warning: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{`warning: server_name "localhost" does not match public_base_url`, why,
		`mxid signs as "localhost"`, `set server_name = "localhost:18290"`, "configuration OK, with 1 warning(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("check-config output lacks %q:\n%s", want, out)
		}
	}

	s := startServe(t, config)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.log.String(), "msg=serving") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	s.stop(t)
	var line string
	for l := range strings.Lines(s.log.String()) {
		if strings.Contains(l, "does not match public_base_url") {
			line = l
		}
	}
	if !strings.Contains(line, "level=WARN") || !strings.Contains(line, strings.ReplaceAll(why, `"`, `\"`)) {
		t.Errorf("serve did not warn about server_name; line %q", line)
	}

	// With the name clients use, there is nothing to warn about.
	path = writeFile(t, dir, "mxid.toml", strings.Replace(config, `server_name = "localhost"`, `server_name = "localhost:18290"`, 1))
	stdout.Reset()
	if err := run(t.Context(), []string{"check-config", "-config", path}, &stdout, &stderr); err != nil || strings.Contains(stdout.String(), "warning") {
		t.Errorf("check-config with a matching server_name: %v\n%s", err, stdout.String())
	}
}

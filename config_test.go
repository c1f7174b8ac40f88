package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

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

// checkConfig runs check-config on a file and returns its report, failing
// the test when the file passes.
func checkConfig(t *testing.T, path string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"check-config", "-config", path}, &stdout, &stderr); err == nil {
		t.Fatalf("check-config accepted %s: %s", path, stdout.String())
	}
	return stderr.String()
}

// problemLines are the report's problem lines, without the file name.
func problemLines(report, path string) []string {
	var out []string
	for _, line := range strings.Split(report, "\n") {
		if rest, ok := strings.CutPrefix(line, "  "+path); ok {
			out = append(out, rest)
		}
	}
	return out
}

// Ten values of the wrong type, and one invalid value, are all reported in
// one run, each with its line; the values decode around them.
func TestCheckConfigTenWrongTypes(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "mxid.toml", `server_name = "id.example.org"
public_base_url = "https://id.example.org"
v1 = "yes"
templates_dir = 7
log = "debug"
data_dir = "`+dir+`"

[http]
listen = "nowhere"
max_body_bytes = "1MB"
read_timeout = 30
trusted_proxies = "127.0.0.1"

[ratelimit]
attempts = { burst = 1.5, every = "30 seconds" }

[outbound]
allow_cidrs = [
  "10.0.0.0/8",
  false,
]
pins = { "matrix.org" = 5 }

[forwarders]
url = "https://matrix.org"
`)
	report := checkConfig(t, path)
	want := []string{
		`:3: v1: "yes" must be true or false`,
		`:4: templates_dir: 7 must be a string in double quotes`,
		`:5: log: "debug" must be a table ([log])`,
		`:9: http.listen: "nowhere" must be IP:port like "127.0.0.1:8090" or ":8090"`,
		`:10: http.max_body_bytes: "1MB" must be a whole number`,
		`:11: http.read_timeout: 30 is not a duration (write it like "30s", "5m", "24h")`,
		`:12: http.trusted_proxies: "127.0.0.1" must be a list: write ["127.0.0.1"]`,
		`:15: ratelimit.attempts.burst: 1.5 must be a whole number`,
		`:15: ratelimit.attempts.every: "30 seconds" is not a duration (write it like "30s", "5m", "24h")`,
		`:20: outbound.allow_cidrs[1]: false must be a string in double quotes`,
		`:22: outbound.pins."matrix.org": 5 must be a string in double quotes`,
		`:24: forwarders: must be a list of tables: write each one as [[forwarders]]`,
	}
	got := problemLines(report, path)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("check-config reported\n%s\nwant\n  %s", report, strings.Join(want, "\n  "))
	}
	if !strings.HasPrefix(report, "12 problems in "+path+":\n") {
		t.Errorf("report does not start with the count:\n%s", report)
	}

	// mxid serve refuses to start on the same list.
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"serve", "-config", path}, &stdout, &stderr)
	if err == nil || err.Error()+"\n" != report {
		t.Errorf("serve: %v\nwant the check-config report", err)
	}
}

// Unknown keys get a suggestion wherever they are: in tables, in arrays of
// tables, in tables inside those, in inline tables, and for a key written
// below the wrong header.
func TestCheckConfigDidYouMean(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "mxid.toml", `server_name = "id.example.org"
public_base_url = "https://id.example.org"

[http]
listen = "127.0.0.1:8090"
data_dir = "/var/lib/mxid"

[[forwarders]]
url = "https://matrix.org"
access_token = "t"

[[forwarders]]
urll = "https://vector.im"
allow_v1_fallback = true

[[terms.policy]]
name = "privacy"
verison = "1.0"
[terms.policy.languages.en]
name = "Privacy"
ulr = "https://id.example.org/privacy"

[lookup]
deadlines = { local = "1s", ldpa = "2s" }
`)
	got := problemLines(checkConfig(t, path), path)
	for _, want := range []string{
		`:6: unknown key "http.data_dir" (did you mean "data_dir"? top-level keys go above the first [table] header)`,
		`:13: unknown key "forwarders[1].urll" (did you mean "forwarders[1].url"?)`,
		`:18: unknown key "terms.policy[0].verison" (did you mean "terms.policy[0].version"?)`,
		`:21: unknown key "terms.policy[0].languages.en.ulr" (did you mean "terms.policy[0].languages.en.url"?)`,
		`:24: unknown key "lookup.deadlines.ldpa" (did you mean "lookup.deadlines.ldap"?)`,
	} {
		if !slices.Contains(got, want) {
			t.Errorf("report lacks %s:\n%s", want, strings.Join(got, "\n"))
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
	s.ready(t)
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

// A file that is not TOML gets the parser's line and a plain message, and
// nothing else.
func TestCheckConfigNotTOML(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
	}{
		{"yaml", "# mxid\nserver_name: id.example.org\nhttp:\n  listen: 127.0.0.1:8090\n",
			`:2: not valid TOML: expected '.' or '=', but got ':' instead (settings are written key = value under [table] headers; see mxid.toml.example)`},
		{"json", "{\n  \"server_name\": \"id.example.org\"\n}\n", `:1: not valid TOML: expected '.' or '=', but got '{' instead`},
		{"utf16", "\xff\xfes\x00=\x00", `:1: not valid TOML: files cannot contain NULL bytes; probably using UTF-16; TOML files must be UTF-8`},
		{"twice", "v1 = true\n\nv1 = false\n", `:3: not valid TOML: Key 'v1' has already been defined`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, tc.name+".toml", tc.content)
			report := checkConfig(t, path)
			got := problemLines(report, path)
			if len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
				t.Errorf("report:\n%s\nwant one problem starting %s", report, tc.want)
			}
			if strings.Contains(strings.ReplaceAll(report, path, "FILE"), "toml:") {
				t.Errorf("report shows the library's prefix:\n%s", report)
			}
		})
	}
}

// keyLines finds each key's line through the parts of TOML that could
// mislead it: multi-line strings and arrays, comments, quoted and dotted
// keys, inline tables, nested arrays of tables.
func TestKeyLines(t *testing.T) {
	doc := `# a = 1
a = """
[not_a_table]
b = 2
"""
'c.d' = 'x' # e = 3
f.g = [
  1, # h = 4
  [2, 3],
  { i = "]" },
]
"j k" = { l = { m = 1 }, n = '''
}''' }
[[p]]
q = 1
[[p.r]]
s = 1
[ p . t ]
u = 1
[[p]]
[[p.r]]
[[p.r]]
v = "\"[w]\""
x = 1
`
	want := map[string]int{
		"a": 2, `"c.d"`: 6, "f": 7, "f.g": 7, "f.g[0]": 8, "f.g[1]": 9, "f.g[1][1]": 9, "f.g[2]": 10, "f.g[2].i": 10,
		`"j k"`: 12, `"j k".l`: 12, `"j k".l.m`: 12, `"j k".n`: 12,
		"p": 14, "p[0]": 14, "p[0].q": 15, "p[0].r[0]": 16, "p[0].r[0].s": 17, "p[0].t": 18, "p[0].t.u": 19,
		"p[1]": 20, "p[1].r[0]": 21, "p[1].r[1]": 22, "p[1].r[1].v": 23, "p[1].r[1].x": 24,
	}
	var tree map[string]any
	if _, err := toml.Decode(doc, &tree); err != nil {
		t.Fatalf("the test document is not TOML: %v", err)
	}
	got := keyLines(doc)
	for k, l := range want {
		if got[k] != l {
			t.Errorf("line of %s: %d, want %d", k, got[k], l)
		}
	}
	for _, k := range []string{"not_a_table", "b", "e", "h", "w"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s (inside a string or comment) was taken for a key", k)
		}
	}
	if l := lineOf(got, "p[1].r[1].nope"); l != 22 {
		t.Errorf("an unknown key is placed on line %d, want its table's (22)", l)
	}
	if l := lineOf(got, "nowhere.at.all"); l != 0 {
		t.Errorf("a key not in the file is placed on line %d", l)
	}
}

func TestDidYouMean(t *testing.T) {
	known := knownKeys(reflect.TypeOf(Config{}))
	top := tableFields(reflect.TypeOf(Config{}))
	http := tableFields(reflect.TypeOf(Config{}.HTTP))
	for _, tc := range []struct {
		path, key string
		fields    map[string]reflect.Type
		want      string
	}{
		{"", "sever_name", top, ` (did you mean "server_name"?)`},
		{"", "Server_Nmae", top, ` (did you mean "server_name"?)`},
		{"http", "listn", http, ` (did you mean "http.listen"?)`},
		{"http", "public_base_url", http, ` (did you mean "public_base_url"? top-level keys go above the first [table] header)`},
		{"", "max_body_bytes", top, ` (did you mean "http.max_body_bytes"? it belongs under [http])`},
		{"", "completely_unrelated_thing", top, ""},
	} {
		if got := didYouMean(tc.path, tc.key, tc.fields, known); got != tc.want {
			t.Errorf("didYouMean(%q, %q) = %q, want %q", tc.path, tc.key, got, tc.want)
		}
	}
}

// FuzzConfig: no document makes the checker panic, every key of a
// document that parses has a line in it, and a document that passes the
// check decodes exactly as the library alone decodes it.
func FuzzConfig(f *testing.F) {
	example, err := os.ReadFile("mxid.toml.example")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	for _, seed := range []string{
		"v1 = \"yes\"\n[http]\nlisen = 1\n[[forwarders]]\nurll = 2\n",
		"a = \"\"\"\n[x]\n\"\"\"\n[[p]]\n[[p.r]]\n[p.t]\nu = [1, {v = 2}]\n",
		"server:\n  name: x\n",
		"[outbound.pins]\n\"a.b\" = \"x\"\n'c' = 5\n",
		"ratelimit.attempts = { burst = 1.5, every = \"30 seconds\" }\n",
		"[0]\n\"\"=[0,{0=0}]",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		// decodeConfig reads no files; the secrets and Validate, which do,
		// are left out so that a mutated path cannot block on a device.
		cfg := DefaultConfig()
		lines, problems := decodeConfig(doc, &cfg)
		var tree map[string]any
		if _, err := toml.Decode(doc, &tree); err != nil {
			if lines != nil || len(problems) != 1 {
				t.Fatalf("a syntax error gave lines %v and problems %v", lines, problems)
			}
			return
		}
		n := strings.Count(doc, "\n") + 1
		var walk func(key string, v any)
		walk = func(key string, v any) {
			if l := lines[key]; l < 1 || l > n {
				t.Fatalf("key %s: line %d (of %d)", key, l, n)
			}
			if m, ok := v.(map[string]any); ok {
				for k, e := range m {
					walk(joinKey(key, k), e)
				}
			}
			if l, ok := listOf(v); ok {
				if _, more := lines[fmt.Sprintf("%s[%d]", key, len(l))]; more {
					// The library drops elements of some arrays under the
					// empty key ("" = [0, {a = 1}] decodes to [{a = 1}]);
					// there is no saying which.
					return
				}
				for i, e := range l {
					walk(fmt.Sprintf("%s[%d]", key, i), e)
				}
			}
		}
		for k, v := range tree {
			walk(joinKey("", k), v)
		}
		if len(problems) == 0 {
			direct := DefaultConfig()
			if _, err := toml.Decode(doc, &direct); err != nil {
				t.Fatalf("passed the check, but the library refuses it: %v", err)
			}
			if !reflect.DeepEqual(normalise(direct), normalise(cfg)) {
				t.Fatalf("decoded differently:\n%s\n%s", normalise(direct), normalise(cfg))
			}
		}
	})
}

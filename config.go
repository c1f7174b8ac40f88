package main

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"mxid/lookup"
	"mxid/mail"
	"mxid/server"
)

// Config is the whole of mxid's configuration. Each section's type and
// validation belong to the package that uses it; main decodes and checks.
type Config struct {
	server.Config

	// DataDir holds mxid.db and the signing key (with bbolt), the admin
	// socket and, in acme mode, the certificates.
	DataDir  string         `toml:"data_dir"`
	Database DatabaseConfig `toml:"database"`
	Log      LogConfig      `toml:"log"`

	// TemplatesDir holds files that replace the embedded templates of the
	// same name (emails, SMS, submitToken pages); "" uses the embedded ones.
	TemplatesDir string                   `toml:"templates_dir"`
	Email        mail.EmailConfig         `toml:"email"`
	SMS          mail.SMSConfig           `toml:"sms"`
	Lookup       lookup.Config            `toml:"lookup"`
	LDAP         lookup.LDAPConfig        `toml:"ldap"`
	DNS          lookup.DNSConfig         `toml:"dns"`
	Forwarders   []lookup.ForwarderConfig `toml:"forwarders"`
	Directory    lookup.DirectoryConfig   `toml:"directory"`
}

// LogConfig is the [log] section.
type LogConfig struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// DefaultConfig is the embedded default: what mxid runs with when there is
// no config file, and what every key not given in a file falls back to.
func DefaultConfig() Config {
	return Config{
		Config:   server.DefaultConfig(),
		DataDir:  "./mxid-data",
		Database: DefaultDatabaseConfig(),
		Log:      LogConfig{Level: "info", Format: "text"},

		Email:  mail.DefaultEmailConfig(),
		SMS:    mail.DefaultSMSConfig(),
		Lookup: lookup.DefaultConfig(),
		LDAP:   lookup.DefaultLDAPConfig(),
		DNS:    lookup.DefaultDNSConfig(),

		Directory: lookup.DefaultDirectoryConfig(),
	}
}

// Validate reports every problem in the configuration, not just the first.
func (c *Config) Validate() []error {
	errs := c.Config.Validate()
	errs = append(errs, c.Lookup.Validate()...)
	errs = append(errs, c.LDAP.Validate()...)
	errs = append(errs, c.DNS.Validate()...)
	errs = append(errs, lookup.ValidateForwarders(c.Forwarders)...)
	errs = append(errs, c.Directory.Validate(&c.LDAP, c.Outbound)...)
	errs = append(errs, c.Database.Validate()...)
	if c.Database.Postgres() && c.Database.ClaimLease < 2*c.Outbound.Timeout {
		// An onbind delivery is up to two requests (POST, then PUT): a
		// claim that lapses before they are answered lets a second replica
		// deliver the same invites again.
		errs = append(errs, fmt.Errorf("database.claim_lease (%v) must be at least twice outbound.timeout (%v): a delivery is up to two requests", c.Database.ClaimLease, c.Outbound.Timeout))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir must not be empty"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q must be one of debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q must be text or json", c.Log.Format))
	}
	errs = append(errs, c.Email.Validate()...)
	errs = append(errs, c.SMS.Validate()...)
	if c.TemplatesDir != "" {
		if _, err := mail.LoadTemplates(c.TemplatesDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// ConfigError carries every problem found in a configuration, in the order
// of the lines they are on.
type ConfigError struct {
	Path     string
	Problems []error
}

// ConfigProblem is one problem and the line of the file it is on (0 when it
// is not on one, e.g. a default that another setting makes invalid).
type ConfigProblem struct {
	Line int
	Err  error
}

func (p ConfigProblem) Error() string { return p.Err.Error() }
func (p ConfigProblem) Unwrap() error { return p.Err }

func (e *ConfigError) Error() string {
	var b strings.Builder
	noun := "problems"
	if len(e.Problems) == 1 {
		noun = "problem"
	}
	fmt.Fprintf(&b, "%d %s in %s:", len(e.Problems), noun, e.Path)
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(e.Path)
		var cp ConfigProblem
		if errors.As(p, &cp) && cp.Line > 0 {
			fmt.Fprintf(&b, ":%d", cp.Line)
		}
		b.WriteString(": ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// loadConfig reads the file at path over the defaults. Every problem comes
// back at once in a *ConfigError, each with its line, in the order of the
// file: a syntax error (then nothing else can be read), or else every value
// of the wrong type, every unknown key (suggesting the key nearest to it),
// every unreadable *_file secret and every invalid setting.
func loadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	lines, problems := decodeConfig(string(data), &cfg)
	if lines != nil {
		others := resolveSecretFiles(reflect.ValueOf(&cfg).Elem(), "")
		for _, err := range append(others, cfg.Validate()...) {
			problems = append(problems, ConfigProblem{Line: lineOf(lines, leadingKey(err.Error())), Err: err})
		}
	}
	if len(problems) > 0 {
		sort.SliceStable(problems, func(i, j int) bool {
			li, lj := problems[i].(ConfigProblem).Line, problems[j].(ConfigProblem).Line
			return li != 0 && (lj == 0 || li < lj) // those on no line last
		})
		return cfg, &ConfigError{Path: path, Problems: problems}
	}
	return cfg, nil
}

// decodeConfig decodes doc over cfg, reading nothing else. It returns the
// line of each key (nil when doc is not TOML) and the problems of syntax
// and type: wrong types and unknown keys are found by comparing the
// document with the Config type, then removed so that the rest decodes
// (BurntSushi/toml's decoder stops at the first wrong type) and can be
// validated in the same run.
func decodeConfig(doc string, cfg *Config) (map[string]int, []error) {
	var tree map[string]any
	if _, err := toml.Decode(doc, &tree); err != nil {
		return nil, []error{syntaxProblem(err)}
	}
	lines := keyLines(doc)
	var problems []error
	add := func(key string, err error) {
		problems = append(problems, ConfigProblem{Line: lineOf(lines, key), Err: err})
	}
	checkTable(reflect.TypeOf(*cfg), tree, "", knownKeys(reflect.TypeOf(*cfg)), add)
	var cleaned bytes.Buffer
	err := toml.NewEncoder(&cleaned).Encode(tree)
	if err == nil {
		_, err = toml.Decode(cleaned.String(), cfg)
	}
	if err != nil { // checkTable let through something the decoder refuses
		add("", fmt.Errorf("cannot decode: %v", err))
	}
	return lines, problems
}

// syntaxProblem words the parser's error: the line, and its message
// without the library's prefix.
func syntaxProblem(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := "not valid TOML: " + strings.TrimSuffix(pe.Message, ".")
		if strings.HasPrefix(pe.Message, "expected") {
			msg += " (settings are written key = value under [table] headers; see mxid.toml.example)"
		}
		return ConfigProblem{Line: pe.Position.Line, Err: errors.New(msg)}
	}
	return ConfigProblem{Err: err}
}

var leadingKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\[[0-9]+\])*(\.[A-Za-z0-9_-]+(\[[0-9]+\])*)*`)

// leadingKey is the key path a validation message starts with
// ("terms.policy[0].languages.en: …"), or "".
func leadingKey(msg string) string {
	k := leadingKeyRE.FindString(msg)
	if rest := msg[len(k):]; rest != "" && rest[0] != ':' && rest[0] != ' ' {
		return ""
	}
	return k
}

var (
	durationType    = reflect.TypeFor[time.Duration]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// checkTable reports each key of table that t has no field for and each
// value of a type its field cannot hold, and deletes them from table (the
// defaults stay). path is the table's key path; known lists every key
// path of the whole configuration, for suggestions.
func checkTable(t reflect.Type, table map[string]any, path string, known []string, add func(string, error)) {
	fields := tableFields(t)
	for _, k := range slices.Sorted(maps.Keys(table)) { // the same report every run
		v := table[k]
		ft, ok := fields[k]
		if !ok {
			for name, t := range fields {
				if strings.EqualFold(name, k) { // as the decoder matches
					ft, ok = t, true
				}
			}
		}
		key := joinKey(path, k)
		if !ok {
			add(key, fmt.Errorf("unknown key %q%s", key, didYouMean(path, k, fields, known)))
			delete(table, k)
			continue
		}
		if !checkValue(ft, v, key, known, add) {
			delete(table, k)
		}
	}
}

// checkValue reports why v cannot be decoded into a t and returns false
// when it cannot. Tables are checked (and cleaned) key by key, so a table
// with a bad key in it still decodes.
func checkValue(t reflect.Type, v any, key string, known []string, add func(string, error)) bool {
	bad := func(format string, args ...any) bool {
		add(key, fmt.Errorf("%s: %s "+format, append([]any{key, describe(v)}, args...)...))
		return false
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		switch d := v.(type) {
		case string:
			if _, err := time.ParseDuration(d); err == nil {
				return true
			}
		case int64:
			if d == 0 {
				return true
			}
		}
		return bad(`is not a duration (write it like "30s", "5m", "24h")`)
	}
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		s, ok := v.(string)
		if !ok {
			return bad("must be a string in double quotes")
		}
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			return bad("is not valid: %v", err)
		}
		return true
	}
	switch t.Kind() {
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return bad("must be true or false")
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return bad("must be a string in double quotes")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			return bad("must be a whole number")
		}
		if reflect.New(t).Elem().OverflowInt(n) {
			return bad("is too large")
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(int64)
		if !ok || n < 0 {
			return bad("must be a whole number, 0 or more")
		}
		if reflect.New(t).Elem().OverflowUint(uint64(n)) {
			return bad("is too large")
		}
	case reflect.Float32, reflect.Float64:
		switch v.(type) {
		case int64, float64:
		default:
			return bad("must be a number")
		}
	case reflect.Slice:
		elems, ok := listOf(v)
		switch {
		case !ok && t.Elem().Kind() == reflect.Struct:
			add(key, fmt.Errorf("%s: must be a list of tables: write each one as [[%s]]", key, key))
			return false
		case !ok:
			if _, isTable := v.(map[string]any); !isTable {
				return bad("must be a list: write [%s]", literal(v))
			}
			return bad("must be a list, like [\"…\", \"…\"]")
		}
		good := true
		for i, e := range elems {
			good = checkValue(t.Elem(), e, fmt.Sprintf("%s[%d]", key, i), known, add) && good
		}
		return good
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return bad("must be a table (%s)", tableHint(key))
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if !checkValue(t.Elem(), m[k], joinKey(key, k), known, add) {
				delete(m, k)
			}
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return bad("must be a table (%s)", tableHint(key))
		}
		checkTable(t, m, key, known, add)
	}
	return true
}

// tableHint says how to write the table at key: a [header], or inline for
// a list element.
func tableHint(key string) string {
	if strings.HasSuffix(key, "]") {
		return "{ key = value, … }"
	}
	return "[" + key + "]"
}

// listOf returns the elements of a TOML array (of values or of tables).
func listOf(v any) ([]any, bool) {
	switch l := v.(type) {
	case []any:
		return l, true
	case []map[string]any:
		out := make([]any, len(l))
		for i, m := range l {
			out[i] = m
		}
		return out, true
	}
	return nil, false
}

// describe shows a TOML value in a message: strings quoted (and cut when
// long), numbers and booleans as written, lists and tables by kind.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		if r := []rune(v); len(r) > 40 {
			v = string(r[:40]) + "…"
		}
		return strconv.Quote(v)
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date"
	}
	if _, ok := listOf(v); ok {
		return "a list"
	}
	return fmt.Sprint(v)
}

// literal writes a scalar as TOML, for "write [X]" suggestions.
func literal(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return describe(v)
}

// tableFields maps each key of a struct type (embedded structs inline) to
// its field's type.
func tableFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, inline := tomlName(f)
		if inline {
			maps.Copy(out, tableFields(f.Type))
		} else if name != "" {
			out[name] = f.Type
		}
	}
	return out
}

// joinKey appends a key to a key path, quoted when it is not a bare key.
func joinKey(path, k string) string {
	if k == "" || strings.ContainsFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) {
		k = strconv.Quote(k)
	}
	if path == "" {
		return k
	}
	return path + "." + k
}

// tomlName is a struct field's key, or "" for fields TOML skips; embedded
// structs report inline.
func tomlName(f reflect.StructField) (name string, inline bool) {
	if f.Anonymous && f.Type.Kind() == reflect.Struct && f.Tag.Get("toml") == "" {
		return "", true
	}
	if !f.IsExported() {
		return "", false
	}
	name, _, _ = strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return "", false
	}
	if name == "" {
		name = f.Name
	}
	return name, false
}

// knownKeys lists every key path of a config type, "*" standing for any map
// key or array index ("terms.policy.*.languages.*.url").
func knownKeys(t reflect.Type) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Struct:
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				name, inline := tomlName(f)
				if inline {
					walk(f.Type, prefix)
					continue
				}
				if name == "" {
					continue
				}
				p := prefix + name
				out = append(out, p)
				walk(f.Type, p+".")
			}
		case reflect.Map, reflect.Slice:
			if e := t.Elem(); e.Kind() == reflect.Struct || e.Kind() == reflect.Map {
				walk(e, prefix+"*.")
			}
		}
	}
	walk(t, "")
	return out
}

// didYouMean suggests what an unknown key k of the table at path may have
// meant, as ` (did you mean "…"?)`: a key of the same table spelled nearly
// the same, else the one key of that name in another table (a line written
// below the wrong [table] header); "" when nothing is close.
func didYouMean(path, k string, fields map[string]reflect.Type, known []string) string {
	best, bestDist := "", 1<<30
	for name := range fields {
		if d := levenshtein(strings.ToLower(k), name); d < bestDist || d == bestDist && name < best {
			best, bestDist = name, d
		}
	}
	if best != "" && bestDist <= max(2, len(k)/2) {
		return fmt.Sprintf(" (did you mean %q?)", joinKey(path, best))
	}
	var elsewhere []string
	for _, key := range known {
		if !strings.Contains(key, "*") && (key == k || strings.HasSuffix(key, "."+k)) {
			elsewhere = append(elsewhere, key)
		}
	}
	if len(elsewhere) != 1 {
		return ""
	}
	if table, ok := strings.CutSuffix(elsewhere[0], "."+k); ok {
		return fmt.Sprintf(" (did you mean %q? it belongs under [%s])", elsewhere[0], table)
	}
	return fmt.Sprintf(" (did you mean %q? top-level keys go above the first [table] header)", elsewhere[0])
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// resolveSecretFiles fills every string key X that has a sibling X_file set
// from that file's contents (trailing newline removed). Setting both is an
// error, so a secret is never silently taken from the wrong place.
func resolveSecretFiles(v reflect.Value, prefix string) []error {
	var errs []error
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, inline := tomlName(f)
		fv := v.Field(i)
		if inline {
			errs = append(errs, resolveSecretFiles(fv, prefix)...)
			continue
		}
		if name == "" {
			continue
		}
		switch fv.Kind() {
		case reflect.Struct:
			errs = append(errs, resolveSecretFiles(fv, prefix+name+".")...)
		case reflect.Slice:
			if fv.Type().Elem().Kind() == reflect.Struct {
				for j := 0; j < fv.Len(); j++ {
					errs = append(errs, resolveSecretFiles(fv.Index(j), fmt.Sprintf("%s%s[%d].", prefix, name, j))...)
				}
			}
		case reflect.String:
			if !strings.HasSuffix(name, "_file") {
				continue
			}
			path := fv.String()
			if path == "" {
				continue
			}
			target := fieldByTOMLName(v, strings.TrimSuffix(name, "_file"))
			if !target.IsValid() || target.Kind() != reflect.String {
				continue // a *_file key that is a path in its own right (e.g. ca_file)
			}
			if target.String() != "" {
				errs = append(errs, fmt.Errorf("%s%s and %s%s are both set; use one", prefix, strings.TrimSuffix(name, "_file"), prefix, name))
				continue
			}
			secret, err := os.ReadFile(path)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s%s: %v", prefix, name, err))
				continue
			}
			target.SetString(strings.TrimRight(string(secret), "\r\n"))
		}
	}
	return errs
}

func fieldByTOMLName(v reflect.Value, want string) reflect.Value {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		if name, _ := tomlName(t.Field(i)); name == want {
			return v.Field(i)
		}
	}
	return reflect.Value{}
}

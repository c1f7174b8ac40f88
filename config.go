package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"

	"strings"

	"github.com/BurntSushi/toml"

	"mxid/lookup"
	"mxid/mail"
	"mxid/server"
)

// Config is the whole of mxid's configuration. Each section's type and
// validation belong to the package that uses it; main decodes and checks.
type Config struct {
	server.Config

	// DataDir holds mxid.db and the signing key.
	DataDir string    `toml:"data_dir"`
	Log     LogConfig `toml:"log"`

	// TemplatesDir holds files that replace the embedded templates of the
	// same name (emails, SMS, submitToken pages); "" uses the embedded ones.
	TemplatesDir string                   `toml:"templates_dir"`
	Email        mail.EmailConfig         `toml:"email"`
	SMS          mail.SMSConfig           `toml:"sms"`
	Lookup       lookup.Config            `toml:"lookup"`
	LDAP         lookup.LDAPConfig        `toml:"ldap"`
	DNS          lookup.DNSConfig         `toml:"dns"`
	Forwarders   []lookup.ForwarderConfig `toml:"forwarders"`
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
		Config:  server.DefaultConfig(),
		DataDir: "./mxid-data",
		Log:     LogConfig{Level: "info", Format: "text"},

		Email:  mail.DefaultEmailConfig(),
		SMS:    mail.DefaultSMSConfig(),
		Lookup: lookup.DefaultConfig(),
		LDAP:   lookup.DefaultLDAPConfig(),
		DNS:    lookup.DefaultDNSConfig(),
	}
}

// Validate reports every problem in the configuration, not just the first.
func (c *Config) Validate() []error {
	errs := c.Config.Validate()
	errs = append(errs, c.Lookup.Validate()...)
	errs = append(errs, c.LDAP.Validate()...)
	errs = append(errs, c.DNS.Validate()...)
	errs = append(errs, lookup.ValidateForwarders(c.Forwarders)...)
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

// ConfigError carries every problem found in a configuration.
type ConfigError struct {
	Path     string
	Problems []error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problem(s):", e.Path, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// loadConfig reads the file at path over the defaults: decode, reject
// unknown keys (suggesting the known key nearest to each), read *_file
// secrets, then validate everything. All problems come back together in a
// *ConfigError.
func loadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		return cfg, &ConfigError{Path: path, Problems: []error{err}}
	}
	var problems []error
	known := knownKeys(reflect.TypeOf(cfg))
	for _, k := range md.Undecoded() {
		key := k.String()
		msg := fmt.Sprintf("unknown key %q", key)
		if s := suggest(key, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		problems = append(problems, errors.New(msg))
	}
	problems = append(problems, resolveSecretFiles(reflect.ValueOf(&cfg).Elem(), "")...)
	problems = append(problems, cfg.Validate()...)
	if len(problems) > 0 {
		return cfg, &ConfigError{Path: path, Problems: problems}
	}
	return cfg, nil
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

// suggest returns the known key closest to an unknown one, if any is close.
func suggest(unknown string, known []string) string {
	parts := strings.Split(unknown, ".")
	best, bestDist := "", 1<<30
	for _, k := range known {
		kparts := strings.Split(k, ".")
		if len(kparts) != len(parts) {
			continue
		}
		// Put the unknown key's map keys / indexes in place of "*".
		concrete := make([]string, len(kparts))
		for i, p := range kparts {
			if p == "*" {
				concrete[i] = parts[i]
			} else {
				concrete[i] = p
			}
		}
		cand := strings.Join(concrete, ".")
		if d := levenshtein(unknown, cand); d < bestDist {
			best, bestDist = cand, d
		}
	}
	if best == "" || bestDist > max(2, len(parts[len(parts)-1])/2) {
		return ""
	}
	return best
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

package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runInstall(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"install"}, args...), &out, &errOut)
	return out.String() + errOut.String(), err
}

// TestInstallIntoRoot installs into a temporary root twice: the first run
// creates every file with its mode (and owner, when the test runs as
// root), the second changes nothing and keeps the config.
func TestInstallIntoRoot(t *testing.T) {
	root := t.TempDir()
	args := []string{"--root", root, "--domain", "id.example.org", "--email", "ops@example.org", "--server-name", "example.org"}
	svcUser := "mxid"
	if os.Geteuid() == 0 {
		// Owners are set only as root, and only for a user that exists:
		// use one every Debian system has.
		svcUser = "nobody"
		args = append(args, "--user", svcUser)
	}
	out, err := runInstall(t, args...)
	if err != nil {
		t.Fatalf("first install: %v\n%s", err, out)
	}
	t.Logf("first run:\n%s", out)
	for _, want := range []string{"written (mode 0640) and validated", "installed (", "systemd unit /etc/systemd/system/mxid.service: written", "skipped under --root"} {
		if !strings.Contains(out, want) {
			t.Errorf("first run output lacks %q", want)
		}
	}

	files := []struct {
		path  string
		mode  os.FileMode
		owner string // "user", "root:group", "" = not checked
	}{
		{"etc/mxid", 0o755 | os.ModeDir, ""},
		{"etc/mxid/mxid.toml", 0o640, "root:group"},
		{"var/lib/mxid", 0o700 | os.ModeDir, "user"},
		{"usr/local/bin/mxid", 0o755, ""},
		{"etc/systemd/system/mxid.service", 0o644, ""},
	}
	mtimes := map[string]time.Time{}
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		mtimes[f.path] = fi.ModTime()
		if fi.Mode() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.mode)
		}
		if os.Geteuid() == 0 && f.owner != "" {
			u, _ := user.Lookup(svcUser)
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			st := fi.Sys().(*syscall.Stat_t)
			wantUID := uid
			if f.owner == "root:group" {
				wantUID = 0
			}
			if int(st.Uid) != wantUID || int(st.Gid) != gid {
				t.Errorf("%s: owner %d:%d, want %d:%d", f.path, st.Uid, st.Gid, wantUID, gid)
			}
		}
	}

	// The config loads with the same loader as check-config and says what
	// the flags said; it names the real paths, not the --root ones.
	cfg, err := loadConfig(filepath.Join(root, "etc/mxid/mxid.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerName != "example.org" || cfg.PublicBaseURL != "https://id.example.org" || cfg.DataDir != "/var/lib/mxid" ||
		cfg.TLS.Mode != "acme" || cfg.TLS.Email != "ops@example.org" {
		t.Errorf("generated config: server_name %q public_base_url %q data_dir %q tls %q %q",
			cfg.ServerName, cfg.PublicBaseURL, cfg.DataDir, cfg.TLS.Mode, cfg.TLS.Email)
	}
	unit, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/mxid.service"))
	for _, line := range []string{
		"User=" + svcUser, "ExecStart=/usr/local/bin/mxid serve -config /etc/mxid/mxid.toml",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/mxid", "ProtectHome=yes",
		"PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
		"Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "WantedBy=multi-user.target",
	} {
		if !strings.Contains(string(unit), "\n"+line+"\n") {
			t.Errorf("unit lacks the line %q", line)
		}
	}
	exe, _ := os.Executable()
	if same, err := sameContent(exe, filepath.Join(root, "usr/local/bin/mxid")); err != nil || !same {
		t.Errorf("installed binary differs from the running one: %v", err)
	}

	// Second run, different flags: nothing changes, the config is kept.
	out, err = runInstall(t, append(args[:0:0], "--root", root, "--domain", "other.example.org", "--user", svcUser)...)
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	t.Logf("second run:\n%s", out)
	for _, want := range []string{"exists, left unchanged (valid)", "Nothing to change", "--domain other.example.org is ignored", "record for id.example.org"} {
		if !strings.Contains(out, want) {
			t.Errorf("second run output lacks %q", want)
		}
	}
	for _, bad := range []string{"written", "installed (", "created ("} {
		if strings.Contains(out, bad) {
			t.Errorf("second run output says %q", bad)
		}
	}
	for _, f := range files {
		if fi, err := os.Stat(filepath.Join(root, f.path)); err != nil || !fi.ModTime().Equal(mtimes[f.path]) {
			t.Errorf("%s was touched by the second run", f.path)
		}
	}
	if cfg2, _ := loadConfig(filepath.Join(root, "etc/mxid/mxid.toml")); cfg2.PublicBaseURL != "https://id.example.org" {
		t.Errorf("the config was overwritten: %q", cfg2.PublicBaseURL)
	}

	// A config that does not pass check-config stops install before it
	// changes anything: it names every problem and exits non-zero.
	os.Chmod(filepath.Join(root, "var/lib/mxid"), 0o755)
	broken := "server_name = \"bad name\"\npublic_base_url = \"https://id.example.org\"\nv1 = \"yes\"\n[http]\nlisen = \":80\"\n"
	os.WriteFile(filepath.Join(root, "etc/mxid/mxid.toml"), []byte(broken), 0o640)
	before := treeState(t, root)
	out, err = runInstall(t, "--root", root, "--user", svcUser, "--tls", "off")
	if err == nil {
		t.Fatalf("install over a broken config succeeded:\n%s", out)
	}
	report := err.Error()
	for _, want := range []string{
		"does not pass check-config, so nothing was changed",
		"mxid.toml:1: server_name:",
		`mxid.toml:3: v1: "yes" must be true or false`,
		`mxid.toml:5: unknown key "http.lisen" (did you mean "http.listen"?)`,
	} {
		if !strings.Contains(report, want) {
			t.Errorf("install error lacks %q:\n%s", want, report)
		}
	}
	if after := treeState(t, root); !reflect.DeepEqual(before, after) {
		t.Errorf("install over a broken config changed files:\nbefore %v\nafter  %v", before, after)
	}

	// Fixed, the next run goes through and repairs the mode.
	os.WriteFile(filepath.Join(root, "etc/mxid/mxid.toml"), []byte("server_name = \"example.org\"\npublic_base_url = \"https://id.example.org\"\n"), 0o640)
	out, err = runInstall(t, "--root", root, "--user", svcUser)
	if err != nil || !strings.Contains(out, "mode set to 0700") {
		t.Errorf("install over the fixed config: %v\n%s", err, out)
	}
}

// treeState is every path under root with its mode, size and time.
func treeState(t *testing.T, root string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		state[p] = fmt.Sprintf("%v %d %v", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// With a config in place, each flag that it overrides is named, with what
// the config says instead; flags that agree with it are not.
func TestInstallNamesIgnoredFlags(t *testing.T) {
	root := t.TempDir()
	if out, err := runInstall(t, "--root", root, "--domain", "id.example.org", "--email", "ops@example.org"); err != nil {
		t.Fatalf("first install: %v\n%s", err, out)
	}
	out, err := runInstall(t, "--root", root, "--domain", "id.example.org", "--server-name", "example.org",
		"--email", "other@example.org", "--tls", "off", "--listen", "127.0.0.1:9000")
	if err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	for _, want := range []string{
		`note: --server-name example.org is ignored: /etc/mxid/mxid.toml exists and says server_name = "id.example.org"`,
		`note: --email other@example.org is ignored: /etc/mxid/mxid.toml exists and says tls.email = "ops@example.org"`,
		`note: --tls off is ignored: /etc/mxid/mxid.toml exists and says tls.mode = "acme"`,
		`note: --listen 127.0.0.1:9000 is ignored: /etc/mxid/mxid.toml exists and says tls.listen = ":443"`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "--domain") {
		t.Errorf("--domain agrees with the config, yet is named:\n%s", out)
	}
}

// install creates the directories it owns (the data directory 0700, its
// config directory 0755) and, under --root, the missing system directories
// above them with the usual 0755; it changes no directory that exists.
func TestInstallDirectoryModes(t *testing.T) {
	root := t.TempDir()
	for dir, mode := range map[string]os.FileMode{"var": 0o711, "usr/local/bin": 0o775} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, dir), mode)
	}
	if out, err := runInstall(t, "--root", root, "--domain", "id.example.org"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	for dir, mode := range map[string]os.FileMode{
		"var": 0o711, "usr/local/bin": 0o775, // existed: left alone
		"var/lib": 0o755, "etc": 0o755, "etc/systemd": 0o755, "etc/systemd/system": 0o755, // created above
		"var/lib/mxid": 0o700, "etc/mxid": 0o755, // owned
	} {
		fi, err := os.Stat(filepath.Join(root, dir))
		if err != nil {
			t.Errorf("%s: %v", dir, err)
		} else if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %04o, want %04o", dir, fi.Mode().Perm(), mode)
		}
	}
}

func TestInstallDryRunAndBadFlags(t *testing.T) {
	root := t.TempDir()
	out, err := runInstall(t, "--root", root, "--dry-run", "--domain", "id.example.org", "--tls", "off")
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	for _, want := range []string{"dry run", "would create (mode 0700)", "would write", `listen = "127.0.0.1:8090"`, "would copy"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("dry run created %d entries in the root", len(entries))
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no domain", []string{}, "--domain is required"},
		{"bad tls", []string{"--domain", "id.example.org", "--tls", "files"}, "--tls must be acme or off"},
		{"localhost at Let's Encrypt", []string{"--domain", "localhost"}, "cannot get a certificate from a public CA"},
		{"IP domain", []string{"--domain", "192.0.2.1"}, "must be a DNS name"},
		{"bad email", []string{"--domain", "id.example.org", "--email", "nobody"}, "tls.email"},
		{"quote in domain", []string{"--domain", `id".example.org`}, "not allowed"},
		{"bad listen", []string{"--domain", "id.example.org", "--listen", "443"}, "tls.listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := t.TempDir()
			out, err := runInstall(t, append([]string{"--root", r}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error()+out, tc.want) {
				t.Fatalf("want an error containing %q, got %v\n%s", tc.want, err, out)
			}
			if entries, _ := os.ReadDir(r); len(entries) != 0 {
				t.Errorf("a refused install created %d entries", len(entries))
			}
		})
	}
}

// The [email] example at the end of an installed config is valid once
// uncommented (with the password file it names in place).
func TestInstallEmailExampleIsValid(t *testing.T) {
	dir := t.TempDir()
	pw := writeFile(t, dir, "smtp-password", "secret\n")
	var b strings.Builder
	for _, line := range strings.Split(installEmailExample, "\n") {
		if strings.HasPrefix(line, "# [email]") || strings.HasPrefix(line, "# ") && strings.Contains(line, " = ") {
			b.WriteString(strings.TrimPrefix(line, "# ") + "\n")
		}
	}
	text := strings.Replace(b.String(), "/etc/mxid/smtp-password", pw, 1)
	if !strings.Contains(text, "[email]") || !strings.Contains(text, "mode = ") {
		t.Fatalf("no example found in %q", installEmailExample)
	}
	if _, err := loadConfig(writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n%s", dir, text))); err != nil {
		t.Errorf("the example does not load: %v\n%s", err, text)
	}
}

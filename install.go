package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"mxid/server"
)

// Where `mxid install` puts things (before the --root prefix).
const (
	installConfigDir = "/etc/mxid"
	installDataDir   = "/var/lib/mxid"
	installUnitPath  = "/etc/systemd/system/mxid.service"
)

// installer carries out (or, dry, describes) the install steps. Each step
// checks first and changes only what differs, so a second run changes
// nothing.
type installer struct {
	ctx       context.Context
	out       io.Writer
	root      string // prefix for every path written ("" = the real system)
	dry       bool
	noStart   bool
	user      string
	binaryDir string
	n         int
	changed   map[string]bool // which steps changed something
	uid, gid  int             // of user; -1 when unknown
	asRoot    bool
}

// cmdInstall installs mxid as a systemd service: system user, config,
// data directory, binary, hardened unit; then enables and starts it.
func cmdInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("install")
	domain := fs.String("domain", "", "host name clients reach mxid at, e.g. id.example.org (required for a new config)")
	serverName := fs.String("server-name", "", "server name mxid signs with (default: --domain)")
	email := fs.String("email", "", "contact address for the ACME account (acme)")
	tlsMode := fs.String("tls", "acme", "acme: mxid gets its own certificate and serves HTTPS on :443; off: plain HTTP behind a reverse proxy")
	listen := fs.String("listen", "", "listen address (acme: HTTPS, default \":443\"; off: HTTP, default \"127.0.0.1:8090\")")
	root := fs.String("root", "", "install under this directory instead of / (no user is created, nothing is started)")
	dry := fs.Bool("dry-run", false, "print what would be done and change nothing")
	noStart := fs.Bool("no-start", false, "do not enable or start the service")
	binaryDir := fs.String("binary-dir", "/usr/local/bin", "where the mxid binary is installed")
	userName := fs.String("user", "mxid", "system user the service runs as")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	for name, v := range map[string]string{"domain": *domain, "server-name": *serverName, "email": *email, "listen": *listen, "user": *userName} {
		if strings.ContainsAny(v, "\"\\\x00\r\n\t") {
			return fmt.Errorf("--%s: %q contains a character not allowed here", name, v)
		}
	}
	if *tlsMode != "acme" && *tlsMode != "off" {
		return fmt.Errorf("--tls must be acme or off, not %q", *tlsMode)
	}
	if !filepath.IsAbs(*binaryDir) {
		return fmt.Errorf("--binary-dir must be an absolute path")
	}
	if *root != "" {
		abs, err := filepath.Abs(*root)
		if err != nil {
			return err
		}
		*root = abs
	}
	in := &installer{ctx: ctx, out: stdout, root: *root, dry: *dry, noStart: *noStart || *root != "",
		user: *userName, binaryDir: *binaryDir, changed: map[string]bool{}, uid: -1, gid: -1, asRoot: os.Geteuid() == 0}
	if !in.asRoot && in.root == "" && !in.dry {
		return errors.New("mxid install changes the system: run it as root (or try --dry-run, or --root DIR)")
	}

	// Everything that can be checked is checked before anything changes:
	// the config is generated and validated with the loader check-config
	// uses.
	configPath := in.path(filepath.Join(installConfigDir, "mxid.toml"))
	var config []byte
	if _, err := os.Stat(configPath); errors.Is(err, os.ErrNotExist) {
		if *domain == "" {
			return errors.New("--domain is required (the host name clients reach mxid at, e.g. id.example.org)")
		}
		if *serverName == "" {
			*serverName = *domain
		}
		config = generateConfig(*domain, *serverName, *email, *tlsMode, *listen)
		if err := validateGenerated(config); err != nil {
			return err
		}
	} else {
		// The existing config wins over flags; it must load, or the
		// service would be (re)started on a config it refuses.
		existing, err := loadConfig(configPath)
		if err != nil {
			return fmt.Errorf("%s exists and does not pass check-config, so nothing was changed; fix it (mxid check-config -config %s) and run mxid install again.\n%w",
				configPath, configPath, err)
		}
		given := map[string]string{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = f.Value.String() })
		for _, note := range ignoredFlags(given, existing) {
			fmt.Fprintf(stdout, "note: %s is ignored: %s exists and says %s\n", note[0], filepath.Join(installConfigDir, "mxid.toml"), note[1])
		}
		if u, err := url.Parse(existing.PublicBaseURL); err == nil {
			*domain = u.Hostname()
		}
		*tlsMode = existing.TLS.Mode
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the running binary: %w", err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return err
	}

	if in.dry {
		fmt.Fprintln(stdout, "mxid install, dry run: this is what would be done; nothing is changed.")
	} else {
		fmt.Fprintln(stdout, "mxid install:")
	}
	if in.root != "" {
		fmt.Fprintf(stdout, "(into %s: no user is created, no service started)\n", in.root)
	}
	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{fmt.Sprintf("system user %q", in.user), in.ensureUser},
		{"directory " + installConfigDir, func() (string, error) { return in.ensureDir(installConfigDir, 0o755, ownerAsIs) }},
		{"data directory " + installDataDir + " (mode 0700, owned by " + in.user + ")", func() (string, error) {
			return in.ensureDir(installDataDir, 0o700, ownerUser)
		}},
		{"configuration " + filepath.Join(installConfigDir, "mxid.toml"), func() (string, error) { return in.ensureConfig(config) }},
		{"binary " + filepath.Join(in.binaryDir, "mxid"), func() (string, error) { return in.ensureBinary(exe) }},
		{"systemd unit " + installUnitPath, in.ensureUnit},
		{"systemctl daemon-reload", in.daemonReload},
		{"systemctl enable --now mxid", in.enableStart},
	}
	for _, s := range steps {
		in.n++
		status, err := s.fn()
		if err != nil {
			fmt.Fprintf(stdout, "  %d. %s: FAILED: %v\n", in.n, s.name, err)
			return fmt.Errorf("install stopped at step %d (%s): %w", in.n, s.name, err)
		}
		fmt.Fprintf(stdout, "  %d. %s: %s\n", in.n, s.name, status)
	}
	if in.dry {
		return nil
	}
	if len(in.changed) == 0 {
		fmt.Fprintln(stdout, "Nothing to change: mxid is installed.")
	}
	fmt.Fprint(stdout, installNextSteps(*tlsMode, *domain))
	return nil
}

// ignoredFlags lists, for each flag given that an existing config decides
// instead, the flag as given and what the config says.
func ignoredFlags(given map[string]string, cfg Config) [][2]string {
	listenKey, listen := "http.listen", cfg.HTTP.Listen
	if cfg.TLS.Mode != server.TLSOff {
		listenKey, listen = "tls.listen", cfg.TLS.Listen
	}
	host := cfg.PublicBaseURL
	if u, err := url.Parse(cfg.PublicBaseURL); err == nil {
		host = u.Hostname()
	}
	var out [][2]string
	for _, f := range []struct{ flag, value, key, says string }{
		{"domain", host, "public_base_url", cfg.PublicBaseURL},
		{"server-name", cfg.ServerName, "server_name", cfg.ServerName},
		{"email", cfg.TLS.Email, "tls.email", cfg.TLS.Email},
		{"tls", cfg.TLS.Mode, "tls.mode", cfg.TLS.Mode},
		{"listen", listen, listenKey, listen},
	} {
		if v, ok := given[f.flag]; ok && v != f.value {
			out = append(out, [2]string{fmt.Sprintf("--%s %s", f.flag, v), fmt.Sprintf("%s = %q", f.key, f.says)})
		}
	}
	return out
}

// path is p under the --root prefix.
func (in *installer) path(p string) string {
	if in.root == "" {
		return p
	}
	return filepath.Join(in.root, p)
}

func (in *installer) ensureUser() (string, error) {
	u, err := user.Lookup(in.user)
	if err == nil {
		in.uid, _ = strconv.Atoi(u.Uid)
		in.gid, _ = strconv.Atoi(u.Gid)
		return "exists (uid " + u.Uid + ")", nil
	}
	shell := "/usr/sbin/nologin"
	if _, err := os.Stat(shell); err != nil {
		shell = "/sbin/nologin"
	}
	cmd := []string{"useradd", "--system", "--user-group", "--home-dir", installDataDir, "--no-create-home", "--shell", shell, in.user}
	switch {
	case in.root != "":
		return "skipped under --root (would run: " + strings.Join(cmd, " ") + ")", nil
	case in.dry:
		return "would run: " + strings.Join(cmd, " "), nil
	}
	if out, err := exec.CommandContext(in.ctx, cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, bytes.TrimSpace(out))
	}
	u, err = user.Lookup(in.user)
	if err != nil {
		return "", fmt.Errorf("user %s was created but cannot be looked up: %w", in.user, err)
	}
	in.uid, _ = strconv.Atoi(u.Uid)
	in.gid, _ = strconv.Atoi(u.Gid)
	in.changed["user"] = true
	return "created (uid " + u.Uid + ")", nil
}

// Who owns what install writes.
type ownership int

const (
	ownerAsIs      ownership = iota // left alone (root's, as created)
	ownerRootGroup                  // root, with the service user's group (config)
	ownerUser                       // the service user (data directory)
)

// chown sets the owner when running as root and the user exists; it says
// what it did.
func (in *installer) chown(path string, o ownership) (string, error) {
	if o == ownerAsIs || !in.asRoot || in.uid < 0 {
		return "", nil
	}
	uid := 0
	if o == ownerUser {
		uid = in.uid
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return "", err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid && int(st.Gid) == in.gid {
		return "", nil
	}
	if in.dry {
		return "would set owner", nil
	}
	in.changed[path] = true
	return "owner set", os.Lchown(path, uid, in.gid)
}

func (in *installer) ensureDir(p string, mode os.FileMode, o ownership) (string, error) {
	full := in.path(p)
	fi, err := os.Stat(full)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if in.dry {
			return fmt.Sprintf("would create (mode %04o)", mode), nil
		}
		if err := makeParents(full); err != nil {
			return "", err
		}
		if err := os.Mkdir(full, mode); err != nil {
			return "", err
		}
		if err := os.Chmod(full, mode); err != nil { // Mkdir honours the umask
			return "", err
		}
		in.changed[p] = true
		if _, err := in.chown(full, o); err != nil {
			return "", err
		}
		return fmt.Sprintf("created (mode %04o)", mode), nil
	case err != nil:
		return "", err
	case !fi.IsDir():
		return "", fmt.Errorf("%s exists and is not a directory", full)
	}
	var notes []string
	if fi.Mode().Perm() != mode {
		if in.dry {
			notes = append(notes, fmt.Sprintf("would set mode %04o", mode))
		} else {
			if err := os.Chmod(full, mode); err != nil {
				return "", err
			}
			in.changed[p] = true
			notes = append(notes, fmt.Sprintf("mode set to %04o", mode))
		}
	}
	if note, err := in.chown(full, o); err != nil {
		return "", err
	} else if note != "" {
		notes = append(notes, note)
	}
	if len(notes) == 0 {
		return "exists, unchanged", nil
	}
	return "exists, " + strings.Join(notes, ", "), nil
}

func (in *installer) ensureConfig(config []byte) (string, error) {
	full := in.path(filepath.Join(installConfigDir, "mxid.toml"))
	if config == nil {
		// Never overwritten: the operator may have edited it. cmdInstall
		// has checked it before changing anything.
		return "exists, left unchanged (valid)", nil
	}
	if in.dry {
		return "would write (mode 0640, readable by " + in.user + "):\n" + indent(string(config), "       | "), nil
	}
	f, err := os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(config); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	in.changed["config"] = true
	if _, err := in.chown(full, ownerRootGroup); err != nil {
		return "", err
	}
	return "written (mode 0640) and validated", nil
}

func (in *installer) ensureBinary(exe string) (string, error) {
	dest := in.path(filepath.Join(in.binaryDir, "mxid"))
	if fi, err := os.Stat(dest); err == nil {
		if src, err := os.Stat(exe); err == nil && os.SameFile(fi, src) {
			return "is the running binary, unchanged", nil
		}
		same, err := sameContent(exe, dest)
		if err != nil {
			return "", err
		}
		if same && fi.Mode().Perm() == 0o755 {
			return "exists, unchanged", nil
		}
		if in.dry {
			return "would replace with " + exe, nil
		}
	} else if in.dry {
		return "would copy " + exe, nil
	}
	if err := makeParents(dest); err != nil {
		return "", err
	}
	// Write beside it and rename, so a running mxid is not disturbed.
	data, err := os.ReadFile(exe)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(dest, data, 0o755); err != nil {
		return "", err
	}
	in.changed["binary"] = true
	return fmt.Sprintf("installed (%.1f MB, mode 0755)", float64(len(data))/1e6), nil
}

func (in *installer) ensureUnit() (string, error) {
	full := in.path(installUnitPath)
	unit := systemdUnit(in.user, filepath.Join(in.binaryDir, "mxid"))
	old, err := os.ReadFile(full)
	switch {
	case err == nil && bytes.Equal(old, unit):
		return "exists, unchanged", nil
	case in.dry && err == nil:
		return "would update (local changes belong in a drop-in: systemctl edit mxid)", nil
	case in.dry:
		return "would write:\n" + indent(string(unit), "       | "), nil
	}
	if err := makeParents(full); err != nil {
		return "", err
	}
	if err := writeFileAtomic(full, unit, 0o644); err != nil {
		return "", err
	}
	in.changed["unit"] = true
	if old != nil {
		return "updated (local changes belong in a drop-in: systemctl edit mxid)", nil
	}
	return "written", nil
}

func (in *installer) systemctl(args ...string) error {
	out, err := exec.CommandContext(in.ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (in *installer) daemonReload() (string, error) {
	switch {
	case in.root != "":
		return "skipped under --root", nil
	case in.dry:
		return "would run", nil
	}
	if _, err := exec.LookPath("systemctl"); err != nil {
		return "skipped: systemctl not found (not a systemd machine?)", nil
	}
	if !in.changed["unit"] {
		return "not needed (unit unchanged)", nil
	}
	return "done", in.systemctl("daemon-reload")
}

func (in *installer) enableStart() (string, error) {
	switch {
	case in.root != "":
		return "skipped under --root", nil
	case in.noStart:
		return "skipped (--no-start); later: systemctl enable --now mxid", nil
	case in.dry:
		return "would run", nil
	}
	if _, err := exec.LookPath("systemctl"); err != nil {
		return "skipped: systemctl not found; start it yourself: " + filepath.Join(in.binaryDir, "mxid") + " serve -config " + filepath.Join(installConfigDir, "mxid.toml"), nil
	}
	wasActive := in.systemctl("is-active", "--quiet", "mxid") == nil
	if err := in.systemctl("enable", "--now", "mxid"); err != nil {
		return "", err
	}
	status := "enabled and started"
	if wasActive {
		status = "enabled, running, not restarted (nothing changed)"
		if in.changed["binary"] || in.changed["unit"] || in.changed["config"] {
			// enable --now leaves a running service alone: restart it so
			// it runs the new binary, unit or configuration.
			if err := in.systemctl("restart", "mxid"); err != nil {
				return "", err
			}
			status = "enabled and restarted (binary, unit or config changed)"
		}
	}
	select { // a bad start shows within a moment
	case <-time.After(2 * time.Second):
	case <-in.ctx.Done():
	}
	if in.systemctl("is-active", "--quiet", "mxid") != nil {
		return "", errors.New("the service is not running; see: journalctl -u mxid -e")
	}
	return status + "; follow it with: journalctl -u mxid -f", nil
}

// generateConfig writes the configuration for the flags given; the rest
// stays at the defaults shown in mxid.toml.example.
func generateConfig(domain, serverName, email, tlsMode, listen string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by `mxid install` on %s. Every key and its default: mxid.toml.example.\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "# Check changes with: mxid check-config -config %s\n\n", filepath.Join(installConfigDir, "mxid.toml"))
	fmt.Fprintf(&b, "server_name = %q\npublic_base_url = %q\ndata_dir = %q\n", serverName, "https://"+domain, installDataDir)
	switch tlsMode {
	case "acme":
		fmt.Fprintf(&b, "\n[tls]\n# Certificates from Let's Encrypt: ports 80 and 443 must reach this machine.\nmode = \"acme\"\n")
		if email != "" {
			fmt.Fprintf(&b, "email = %q\n", email)
		}
		if listen != "" {
			fmt.Fprintf(&b, "listen = %q\n", listen)
		}
	case "off":
		if listen == "" {
			listen = "127.0.0.1:8090"
		}
		fmt.Fprintf(&b, "\n[http]\n# Plain HTTP behind a TLS-terminating reverse proxy on this machine.\nlisten = %q\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n", listen)
	}
	b.WriteString(installEmailExample)
	return []byte(b.String())
}

// installEmailExample ends the generated config: how to turn on email
// delivery (a test checks that, uncommented, it is a valid configuration).
const installEmailExample = `
# Validation emails are written to the log until [email] is set up, e.g.:
# [email]
# mode = "starttls"
# host = "smtp.example.org"
# port = 587
# username = "mxid@example.org"
# password_file = "/etc/mxid/smtp-password"
# from = "Identity server <mxid@example.org>"
`

// validateGenerated runs a generated config through the same loader as
// check-config.
func validateGenerated(config []byte) error {
	f, err := os.CreateTemp("", "mxid-install-*.toml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(config); err != nil {
		f.Close()
		return err
	}
	f.Close()
	if _, err := loadConfig(f.Name()); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.Path = "the configuration these flags give"
		}
		return err
	}
	return nil
}

// systemdUnit is the hardened service unit.
func systemdUnit(userName, binary string) []byte {
	return []byte(`# Written by mxid install. Local changes belong in a drop-in: systemctl edit mxid
[Unit]
Description=mxid Matrix identity server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=` + userName + `
Group=` + userName + `
ExecStart=` + binary + ` serve -config ` + installConfigDir + `/mxid.toml
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
WorkingDirectory=` + installDataDir + `
StateDirectory=mxid
StateDirectoryMode=0700
UMask=0077

# Ports 80 and 443 without running as root.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes

# Nothing but the data directory is writable; no view of homes, devices,
# kernel knobs or other processes.
ProtectSystem=strict
ReadWritePaths=` + installDataDir + `
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
`)
}

func installNextSteps(tlsMode, domain string) string {
	if domain == "" {
		domain = "<your domain>"
	}
	var b strings.Builder
	b.WriteString("\nNext:\n")
	b.WriteString("  - DNS: an A (and AAAA) record for " + domain + " pointing at this machine.\n")
	if tlsMode == "acme" {
		b.WriteString("  - Firewall: open TCP ports 80 and 443 (Let's Encrypt checks port 80 or 443).\n")
	} else {
		b.WriteString("  - Reverse proxy: forward https://" + domain + " to mxid (see README: nginx, Caddy).\n")
	}
	b.WriteString("  - Email: set up [email] in " + installConfigDir + "/mxid.toml, then: mxid check smtp -config " + installConfigDir + "/mxid.toml -to you@example.org\n")
	b.WriteString("  - Logs: journalctl -u mxid -f   Backups: mxid backup -config " + installConfigDir + "/mxid.toml FILE\n")
	return b.String()
}

func indent(s, prefix string) string {
	s = strings.TrimRight(s, "\n")
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

func sameContent(a, b string) (bool, error) {
	ha, err := fileHash(a)
	if err != nil {
		return false, err
	}
	hb, err := fileHash(b)
	if err != nil {
		return false, err
	}
	return ha == hb, nil
}

func fileHash(path string) ([32]byte, error) {
	var sum [32]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// makeParents creates the missing directories above p with mode 0755, the
// mode of /etc, /var/lib or /usr/local/bin; it changes none that exists.
func makeParents(p string) error {
	parent := filepath.Dir(p)
	if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := makeParents(parent); err != nil {
		return err
	}
	if err := os.Mkdir(parent, 0o755); err != nil {
		return err
	}
	return os.Chmod(parent, 0o755) // Mkdir honours the umask
}

// writeFileAtomic writes data beside path and renames it into place.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

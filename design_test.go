package main

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportGraph enforces DESIGN.md section 1: the dependency direction
// between mxid's packages, the leaf packages (which import no other mxid
// package and which any package may import), and which package may use
// each core third-party library. Test files are exempt (a test may start a
// DNS server, say).
func TestImportGraph(t *testing.T) {
	const module = "mxid"
	// area is the top-level part of a package path: "", server, lookup, db, mail, web.
	area := func(pkg string) string {
		rest := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		a, _, _ := strings.Cut(rest, "/")
		return a
	}
	allowed := map[string]map[string]bool{
		"":       {"server": true, "lookup": true, "db": true, "mail": true, "web": true},
		"server": {"server": true, "lookup": true, "db": true, "mail": true, "web": true},
		"mail":   {"mail": true, "web": true},
		"lookup": {"lookup": true},
		"db":     {"db": true},
		"web":    {"web": true},
	}
	// Leaves hold the vocabulary several areas need, each under the area
	// that owns its subject.
	leaves := map[string]bool{
		module + "/lookup/threepid": true, // 3PID grammar, canonical forms, lookup hash
		module + "/server/matrixid": true, // Matrix identifier grammar
		module + "/server/outbound": true, // outbound policy, CA pools, TLS descriptions
		module + "/server/signing":  true, // canonical JSON, ed25519 signing
	}
	// Each library lives in one area (and for certmagic, one file).
	libraries := map[string]string{
		"go.etcd.io/bbolt":                    "db",
		"github.com/jackc/pgx/v5":             "db", // db/pg only (its package doc)
		"github.com/go-ldap/ldap/v3":          "lookup",
		"github.com/miekg/dns":                "lookup",
		"github.com/caddyserver/certmagic":    "server",
		"github.com/BurntSushi/toml":          "",
		"github.com/prometheus/client_golang": "server",
	}
	imports := map[string]map[string]bool{} // package -> imported packages
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		pkg := module
		if dir := filepath.ToSlash(filepath.Dir(path)); dir != "." {
			pkg = module + "/" + dir
		}
		if imports[pkg] == nil {
			imports[pkg] = map[string]bool{}
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			imports[pkg][p] = true
			for lib, home := range libraries {
				if p == lib || strings.HasPrefix(p, lib+"/") {
					if area(pkg) != home || (lib == "github.com/caddyserver/certmagic" && filepath.Base(path) != "tls.go") ||
						(lib == "github.com/jackc/pgx/v5" && pkg != module+"/db/pg") {
						t.Errorf("%s imports %s, which belongs in %q (DESIGN.md section 1)", path, lib, home)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for leaf := range leaves {
		if imports[leaf] == nil {
			t.Errorf("leaf %s not found", leaf)
		}
	}
	if len(imports) < 5 {
		t.Fatalf("found only %d packages; is the test running at the module root?", len(imports))
	}
	for pkg, deps := range imports {
		from := area(pkg)
		rules, ok := allowed[from]
		if !ok {
			t.Errorf("package %s is outside the six areas of DESIGN.md", pkg)
			continue
		}
		for dep := range deps {
			if dep != module && !strings.HasPrefix(dep, module+"/") {
				continue
			}
			if dep == module {
				t.Errorf("%s imports package main", pkg)
				continue
			}
			if leaves[pkg] {
				t.Errorf("%s imports %s: a leaf imports no other mxid package (DESIGN.md section 1)", pkg, dep)
				continue
			}
			if !rules[area(dep)] && !leaves[dep] {
				t.Errorf("%s imports %s: %q may not import %q (DESIGN.md section 1)", pkg, dep, from, area(dep))
			}
		}
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mxid/db/pgtest"
)

// built is the mxid binary that tests run as a process, where what they
// check is the process's fate (exit status, signals, stderr): built once
// per test run, removed by TestMain.
var built struct {
	once      sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	code := pgtest.Run(m)
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// mxidBinary builds mxid (go build) the first time a test asks for it.
func mxidBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "mxid-test-binary-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "mxid")
		if out, err := exec.Command("go", "build", "-o", built.path, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// exited is how a run of the binary ended.
type exited struct {
	stdout, stderr string
	code           int            // -1 when a signal ended it
	signal         syscall.Signal // 0 unless a signal ended it
}

func (e exited) String() string {
	if e.signal != 0 {
		return fmt.Sprintf("killed by %v\nstdout: %s\nstderr: %s", e.signal, e.stdout, e.stderr)
	}
	return fmt.Sprintf("exit status %d\nstdout: %s\nstderr: %s", e.code, e.stdout, e.stderr)
}

// crashed says whether the output carries a Go crash: a panic or a stack
// trace.
func (e exited) crashed() bool {
	out := e.stdout + e.stderr
	return strings.Contains(out, "goroutine ") || strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:")
}

// runMxid runs the binary with args to its end. The deadline is generous
// (it only stops a command that would otherwise run for ever, e.g. a serve
// that should have refused to start); reaching it fails the test.
func runMxid(t *testing.T, args ...string) exited {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mxidBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("mxid %s still running after 2 minutes\n%s", strings.Join(args, " "), stderr.String())
	}
	e := exited{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		e.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.signal = ws.Signal()
		}
	default:
		t.Fatalf("mxid %s: %v", strings.Join(args, " "), err)
	}
	return e
}

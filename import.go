package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"mxid/db"
	"mxid/lookup/threepid"
	"mxid/server/matrixid"
)

// importRow is one line of an import file.
type importRow struct {
	Medium  *string `json:"medium"`
	Address *string `json:"address"`
	MXID    *string `json:"mxid"`
	TS      *int64  `json:"ts"`
}

// maxImportLine bounds one line of an import file.
const maxImportLine = 64 << 10

// importChunk is how many bindings go into one transaction.
const importChunk = 10000

// maxReportedRejects bounds the rejected lines listed one by one.
const maxReportedRejects = 100

// cmdImport implements `mxid import [-config PATH] FILE`: it loads bindings
// from JSON lines {"medium", "address", "mxid"[, "ts"]} into the store.
func cmdImport(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("import")
	path := configFlag(fs)
	dryRun := fs.Bool("n", false, "check the file only; store nothing")
	if err := parseArgs(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usageError{errors.New("import needs one FILE")}
	}
	cfg, _, err := resolveConfig(*path)
	if err != nil {
		return err
	}
	in := io.Reader(os.Stdin)
	if name := fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	var store bindingsWriter
	if !*dryRun {
		s, _, err := openBackend(context.Background(), cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		defer s.Close()
		store = s
	}
	res, err := importBindings(store, in, time.Now(), stderr)
	if err != nil {
		return err
	}
	verb := "imported"
	if *dryRun {
		verb = "valid (not stored: -n)"
	}
	fmt.Fprintf(stdout, "%d lines: %d bindings %s, %d rejected, %d blank\n", res.lines, res.stored, verb, res.rejected, res.blank)
	if res.rejected > 0 {
		return usageError{fmt.Errorf("%d lines rejected", res.rejected)}
	}
	return nil
}

type importResult struct{ lines, stored, rejected, blank int }

// bindingsWriter is where import stores bindings: either backend (with
// PostgreSQL, running replicas see them through the change log).
type bindingsWriter interface {
	PutBindings(bs []db.Binding, chunk int) (stored int, err error)
}

// importBindings reads JSON lines from in and stores the valid rows (store
// nil: check only). Rejected lines are reported on report with their
// numbers; a progress line is written every 100,000 lines.
func importBindings(store bindingsWriter, in io.Reader, now time.Time, report io.Writer) (importResult, error) {
	var res importResult
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxImportLine)
	batch := make([]db.Binding, 0, importChunk)
	flush := func() error {
		if store != nil && len(batch) > 0 {
			if _, err := store.PutBindings(batch, importChunk); err != nil {
				return fmt.Errorf("storing bindings (line %d): %w", res.lines, err)
			}
		}
		res.stored += len(batch)
		batch = batch[:0]
		return nil
	}
	start := time.Now()
	for sc.Scan() {
		res.lines++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			res.blank++
			continue
		}
		b, err := parseImportLine(line, now)
		if err != nil {
			res.rejected++
			if res.rejected <= maxReportedRejects {
				fmt.Fprintf(report, "line %d: %v\n", res.lines, err)
			} else if res.rejected == maxReportedRejects+1 {
				fmt.Fprintln(report, "(more rejected lines are counted, not listed)")
			}
			continue
		}
		batch = append(batch, b)
		if len(batch) == importChunk {
			if err := flush(); err != nil {
				return res, err
			}
		}
		if res.lines%100000 == 0 {
			fmt.Fprintf(report, "... %d lines read, %d stored, %d rejected (%.0f lines/s)\n", res.lines, res.stored, res.rejected, float64(res.lines)/time.Since(start).Seconds())
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return res, fmt.Errorf("line %d is longer than %d bytes", res.lines+1, maxImportLine)
		}
		return res, err
	}
	return res, flush()
}

// parseImportLine validates and canonicalises one row.
func parseImportLine(line []byte, now time.Time) (db.Binding, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var row importRow
	if err := dec.Decode(&row); err != nil {
		return db.Binding{}, fmt.Errorf("not a JSON object {\"medium\", \"address\", \"mxid\"[, \"ts\"]}: %v", err)
	}
	if dec.More() {
		return db.Binding{}, errors.New("more than one JSON value on the line")
	}
	if row.Medium == nil || row.Address == nil || row.MXID == nil {
		return db.Binding{}, errors.New(`"medium", "address" and "mxid" are required`)
	}
	medium, address, mxid := *row.Medium, strings.TrimSpace(*row.Address), *row.MXID
	var canon string
	var err error
	switch medium {
	case threepid.Email:
		canon, err = threepid.CanonicalEmail(address)
	case threepid.MSISDN:
		canon, err = threepid.CanonicalMSISDN(address)
		if err != nil { // "+44 7700 900001" and the like
			canon, err = threepid.NormalizePhone(address, "")
		}
	default:
		return db.Binding{}, fmt.Errorf("medium %q is not email or msisdn", medium)
	}
	if err != nil {
		return db.Binding{}, fmt.Errorf("%s address: %v", medium, err)
	}
	if !matrixid.ValidUserID(mxid) {
		return db.Binding{}, fmt.Errorf("mxid %q is not a valid Matrix user ID (@localpart:server)", truncateForReport(mxid))
	}
	ts := now.UnixMilli()
	if row.TS != nil {
		if *row.TS <= 0 || *row.TS > now.Add(24*time.Hour).UnixMilli() {
			return db.Binding{}, fmt.Errorf("ts %d is not a time in milliseconds since 1970 (and not in the future)", *row.TS)
		}
		ts = *row.TS
	}
	// As sydent: valid from ts for 100 years.
	return db.Binding{Medium: medium, Address: canon, MXID: mxid, TS: ts, NotBefore: ts, NotAfter: ts + 100*365*24*3600*1000}, nil
}

func truncateForReport(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

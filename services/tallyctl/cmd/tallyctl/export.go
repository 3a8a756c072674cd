package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/tallyctl/internal/atomicfile"
)

// cmdExport writes an account's monthly export (finance.Export): every journal line of the
// calendar month (UTC) and its totals, built from the journal topic through the same
// statement as `tallyctl statement`, and checked before it is written.
func cmdExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("export", stderr)
	account := fs.String("account", "", "account id (required)")
	month := fs.String("month", "", "calendar month, UTC, YYYY-MM (required), e.g. 2026-11")
	format := fs.String("format", "csv", "csv | json")
	out := fs.String("o", "", "write to this file (mode 0600, replaced whole) instead of stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *account == "" || *month == "" || (*format != "csv" && *format != "json") {
		return usageError{"-account and -month are required; -format is csv or json"}
	}
	if _, _, err := finance.ParseMonth(*month, time.Now()); err != nil {
		return usageError{"-month: " + err.Error()}
	}
	kc, err := kafkaSettings()
	if err != nil {
		return usageError{err.Error()}
	}
	journal, err := finance.ReadJournalTLS(ctx, kc.brokers, kc.tls, kc.topics)
	if err != nil {
		return err
	}
	x, err := finance.NewExport(journal, *account, *month, time.Now())
	if err != nil {
		return err
	}
	if err := x.Check(); err != nil {
		return fmt.Errorf("export does not add up: %w", err)
	}
	write := x.WriteCSV
	if *format == "json" {
		write = x.WriteJSON
	}
	if *out == "" {
		return write(stdout)
	}
	// Written next to the target and renamed over it: a failed export leaves no half file.
	if err := atomicfile.Write(*out, 0o600, write); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "tallyctl export: %s %s: %d lines to %s\n", *account, x.Month, len(x.Lines), *out)
	return nil
}

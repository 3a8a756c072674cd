package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/finance"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/sqlcli"
	"github.com/tallyhq/tally/services/tallyctl/internal/journal"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/pricebook"
	"github.com/tallyhq/tally/shared/tlsx"
)

// kafkaConn is what the finance commands need to read Kafka, from the same environment
// variables as the services (KAFKA_BROKERS, TALLY_TOPIC_PREFIX, KAFKA_TLS_*).
type kafkaConn struct {
	brokers []string
	tls     *tls.Config
	topics  kafkax.Topics
}

func kafkaSettings() (kafkaConn, error) {
	brokers, err := kafkax.ParseBrokers(envOr("KAFKA_BROKERS", "127.0.0.1:9092"))
	if err != nil {
		return kafkaConn{}, fmt.Errorf("KAFKA_BROKERS: %w", err)
	}
	tc, err := env.ParseAsWithOptions[tlsx.ClientConfig](env.Options{Prefix: "KAFKA_TLS_"})
	if err == nil {
		err = tc.ValidateEnv("KAFKA_TLS_")
	}
	if err != nil {
		return kafkaConn{}, err
	}
	built, err := tc.Build()
	if err != nil {
		return kafkaConn{}, err
	}
	return kafkaConn{brokers: brokers, tls: built, topics: kafkax.NewTopics(envOr("TALLY_TOPIC_PREFIX", kafkax.DefaultPrefix))}, nil
}

func cmdSQL(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch code := sqlcli.Main(ctx, args, stdout, stderr); code {
	case 0:
		return nil
	case 2:
		return usageError{"see the usage above"}
	default:
		return fmt.Errorf("query failed (exit %d)", code)
	}
}

func cmdStatement(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("statement", stderr)
	account := fs.String("account", "", "account id (required)")
	from := fs.String("from", "", "start of the period, RFC 3339 (default: the beginning)")
	to := fs.String("to", "", "end of the period (exclusive), RFC 3339 (default: now)")
	format := fs.String("format", "csv", "csv | json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *account == "" || (*format != "csv" && *format != "json") {
		return usageError{"-account is required; -format is csv or json"}
	}
	t1, t2 := time.Unix(0, 0).UTC(), time.Now().UTC()
	for _, p := range []struct {
		s string
		t *time.Time
	}{{*from, &t1}, {*to, &t2}} {
		if p.s == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, p.s)
		if err != nil {
			return usageError{err.Error()}
		}
		if err := events.CheckTime("-from/-to", t); err != nil {
			return usageError{err.Error()}
		}
		*p.t = t
	}
	kc, err := kafkaSettings()
	if err != nil {
		return usageError{err.Error()}
	}
	journal, err := finance.ReadJournalTLS(ctx, kc.brokers, kc.tls, kc.topics)
	if err != nil {
		return err
	}
	st, err := finance.NewStatement(journal, *account, t1, t2)
	if err != nil {
		return err
	}
	if err := st.Check(); err != nil {
		return fmt.Errorf("statement does not add up: %w", err)
	}
	if *format == "json" {
		return st.WriteJSON(stdout)
	}
	return st.WriteCSV(stdout)
}

// reconcileRounds bounds the comparisons reconcile makes, reconcilePause apart, before it
// reports what still differs or was not compared.
const (
	reconcileRounds = 10
	reconcilePause  = 500 * time.Millisecond
)

func cmdReconcile(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reconcile", stderr)
	var a adminFlags
	a.register(fs)
	withCH := fs.Bool("clickhouse", true, "also compare with ClickHouse's sums of ledger_entries (CLICKHOUSE_* settings)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if a.token == "" {
		return usageError{"an admin token is required (-token or TALLY_ADMIN_TOKEN)"}
	}
	kc, err := kafkaSettings()
	if err != nil {
		return usageError{err.Error()}
	}
	// The fold runs with the ledger's own settings, read from the same variables.
	lc, err := env.ParseAs[ledger.Config]()
	if err != nil {
		return usageError{err.Error()}
	}
	book, err := pricebook.LoadOrDefault(lc.PriceBookPath)
	if err != nil {
		return err
	}
	bar := newProgress(stderr)
	rep, err := finance.ReplayTLS(ctx, kc.brokers, kc.tls, kc.topics, lc.FoldConfig(book), false, bar.update)
	bar.done()
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	var sums finance.ClickHouseSums
	if *withCH {
		sums, err = clickHouseSums()
		if err != nil {
			return usageError{err.Error()}
		}
	}
	live := finance.HTTPLive(&http.Client{Timeout: a.timeout}, a.ledgerURL, a.token)
	report, err := finance.ReconcileLive(ctx, rep, live, sums, reconcileRounds, reconcilePause)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "replayed %d events (%d undecodable) into %d accounts\n", rep.Events, rep.Undecodable, len(rep.Balances()))
	if report.Moved > 0 {
		fmt.Fprintf(stdout, "%d accounts kept moving on in the live ledger over %d comparisons and were not compared; run again on a quieter topic\n", report.Moved, reconcileRounds)
	}
	if report.OK() && report.Moved == 0 {
		fmt.Fprintln(stdout, "reconcile: OK — replay, live ledger"+map[bool]string{true: " and ClickHouse", false: ""}[*withCH]+" agree to the micro-credit")
		return nil
	}
	sort.Slice(report.Differences, func(i, j int) bool { return fmt.Sprint(report.Differences[i]) < fmt.Sprint(report.Differences[j]) })
	for _, d := range report.Differences {
		fmt.Fprintf(stdout, "DIFF %+v\n", d)
	}
	return fmt.Errorf("%d differences, %d accounts not compared", len(report.Differences), report.Moved)
}

// clickHouseSums sums the journal in ClickHouse per account (customer lines only).
func clickHouseSums() (finance.ClickHouseSums, error) {
	cfg, err := env.ParseAs[chstore.Config]()
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return func(ctx context.Context) (map[string]finance.Balance, error) {
		conn, err := chstore.Open(cfg)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return journal.Sums(ctx, conn)
	}, nil
}

// progress draws a bar on a terminal and nothing otherwise.
type progress struct {
	w   io.Writer
	tty bool
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	tty := false
	if ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, tty: tty}
}

func (p *progress) update(done, total int64) {
	if !p.tty || total <= 0 {
		return
	}
	const width = 40
	n := int(done * width / total)
	if n > width {
		n = width
	}
	fmt.Fprintf(p.w, "\rreplaying [%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat(".", width-n), done, total)
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/tallyhq/tally/services/tallyctl/stack"
)

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	var cfg stack.Config
	fs.StringVar(&cfg.KafkaAddr, "kafka-addr", envOr("TALLY_RUN_KAFKA_ADDR", "127.0.0.1:19092"), "embedded Kafka broker address (env TALLY_RUN_KAFKA_ADDR)")
	fs.StringVar(&cfg.EmbedClickHouseAddr, "clickhouse-addr", envOr("TALLY_RUN_CLICKHOUSE_ADDR", "127.0.0.1:8123"), "embedded ClickHouse HTTP endpoint address (env TALLY_RUN_CLICKHOUSE_ADDR)")
	fs.StringVar(&cfg.AdmitterAddr, "admitter-addr", envOr("ADMITTER_LISTEN_ADDR", "127.0.0.1:8081"), "admitter address")
	fs.StringVar(&cfg.LedgerAddr, "ledger-addr", envOr("LEDGER_LISTEN_ADDR", "127.0.0.1:8082"), "ledger address")
	fs.StringVar(&cfg.SinkAddr, "sink-addr", envOr("SINK_LISTEN_ADDR", "127.0.0.1:8083"), "sink address (metrics, health)")
	fs.StringVar(&cfg.APIKey, "api-key", os.Getenv("TALLY_RUN_API_KEY"), "edge API key to accept (env TALLY_RUN_API_KEY; default: generated)")
	fs.StringVar(&cfg.AdminToken, "admin-token", os.Getenv("TALLY_RUN_ADMIN_TOKEN"), "admin token to accept (env TALLY_RUN_ADMIN_TOKEN; default: generated)")
	fs.StringVar(&cfg.ClickHouseUser, "clickhouse-user", os.Getenv("TALLY_RUN_CLICKHOUSE_USER"), "the embedded ClickHouse endpoint's writer user, the sink's: inserts into its tables only (env TALLY_RUN_CLICKHOUSE_USER; default tally)")
	fs.StringVar(&cfg.ClickHousePassword, "clickhouse-password", os.Getenv("TALLY_RUN_CLICKHOUSE_PASSWORD"), "its password, at least 16 bytes (env TALLY_RUN_CLICKHOUSE_PASSWORD; default: generated)")
	fs.StringVar(&cfg.ClickHouseAnalystUser, "clickhouse-analyst-user", os.Getenv("TALLY_RUN_CLICKHOUSE_ANALYST_USER"), "the embedded ClickHouse endpoint's read-only user (env TALLY_RUN_CLICKHOUSE_ANALYST_USER; default analyst)")
	fs.StringVar(&cfg.ClickHouseAnalystPassword, "clickhouse-analyst-password", os.Getenv("TALLY_RUN_CLICKHOUSE_ANALYST_PASSWORD"), "its password, at least 16 bytes (env TALLY_RUN_CLICKHOUSE_ANALYST_PASSWORD; default: generated)")
	fs.StringVar(&cfg.PriceBookPath, "pricebook", os.Getenv("TALLY_PRICEBOOK_PATH"), "price book file (default: built in)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := stack.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	printBanner(stdout, st)
	if err := st.Wait(ctx); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\ntally: stopping")
	return nil
}

func printBanner(w io.Writer, st *stack.Stack) {
	fmt.Fprintf(w, `Tally is running on this machine (embedded Kafka at %s, embedded ClickHouse at %s).
Data lives in memory and is gone when it stops; production uses real Kafka and ClickHouse (make up).

  admitter   %s   (edge API; key below)
  ledger     %s   (balances, grants, journal; admin token below)
  sink       %s   (metrics and health)
  clickhouse %s   (ClickHouse HTTP interface: curl, clickhouse-go, Grafana)

  export TALLY_API_KEY=%s
  export TALLY_ADMIN_TOKEN=%s
  export TALLY_CLICKHOUSE_USER=%s TALLY_CLICKHOUSE_PASSWORD=%s   (read-only analyst)

Try it:
  curl -s -X POST %s/v1/accounts/acct_1/grants -H "Authorization: Bearer $TALLY_ADMIN_TOKEN" \
       -H 'Content-Type: application/json' -d '{"amount_micros": 50000000, "source": "purchase"}'
  curl -s -X POST %s/v1/admit -H "Authorization: Bearer $TALLY_API_KEY" -H 'Content-Type: application/json' \
       -d '{"request_id": "req_1", "account_id": "acct_1", "endpoint": "sora.video", "estimate": {"video_seconds": 10, "resolution": "1080p"}}'
  curl -s -X POST %s/v1/finish -H "Authorization: Bearer $TALLY_API_KEY" -H 'Content-Type: application/json' \
       -d '{"request_id": "req_1", "status": "succeeded", "usage": {"video_seconds": 8, "resolution": "1080p"}}'
  curl -s %s/v1/accounts/acct_1 -H "Authorization: Bearer $TALLY_ADMIN_TOKEN"
  curl -s -u "$TALLY_CLICKHOUSE_USER:$TALLY_CLICKHOUSE_PASSWORD" '%s/?query=SELECT+type,count()+FROM+usage_events+GROUP+BY+type'

Ctrl-C stops it.
`, st.Brokers[0], st.ClickHouse, st.AdmitterURL, st.LedgerURL, st.SinkURL, st.ClickHouse, st.APIKey, st.AdminToken,
		st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword, st.LedgerURL, st.AdmitterURL, st.AdmitterURL, st.LedgerURL, st.ClickHouse)
}

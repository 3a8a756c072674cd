package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tallyhq/tally/services/tallyctl/internal/runinfo"
	"github.com/tallyhq/tally/services/tallyctl/internal/secretfile"
	"github.com/tallyhq/tally/services/tallyctl/stack"
	"github.com/tallyhq/tally/shared/kafkax"
)

// runFlags are tallyctl run's settings.
type runFlags struct {
	cfg        stack.Config
	dataDir    string
	ephemeral  bool
	brokers    string
	chServer   string
	chDatabase string
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	var f runFlags
	cfg := &f.cfg
	fs.StringVar(&f.dataDir, "data-dir", runinfo.DataDir(), "data directory: ClickHouse data, keys (keys.env, 0600) and run.json; make run keeps the Kafka log there too (env TALLY_DATA_DIR)")
	fs.BoolVar(&f.ephemeral, "ephemeral", false, "an in-memory demo: the embedded Kafka broker (kfake) and a temporary ClickHouse; nothing survives a restart")
	fs.StringVar(&f.brokers, "kafka-brokers", os.Getenv("KAFKA_BROKERS"), "real Kafka brokers, host:port,... (env KAFKA_BROKERS; required unless -ephemeral)")
	fs.StringVar(&cfg.TopicPrefix, "topic-prefix", envOr("TALLY_TOPIC_PREFIX", kafkax.DefaultPrefix), "topic prefix (env TALLY_TOPIC_PREFIX)")
	fs.StringVar(&cfg.KafkaAddr, "kafka-addr", envOr("TALLY_RUN_KAFKA_ADDR", "127.0.0.1:19092"), "the embedded Kafka broker's address, with -ephemeral (env TALLY_RUN_KAFKA_ADDR)")
	fs.StringVar(&f.chServer, "clickhouse-server", os.Getenv("TALLY_RUN_CLICKHOUSE_SERVER"), "a real ClickHouse server's HTTP interface, host:port, instead of the embedded engine (env TALLY_RUN_CLICKHOUSE_SERVER)")
	fs.StringVar(&f.chDatabase, "clickhouse-database", envOr("TALLY_RUN_CLICKHOUSE_DATABASE", "default"), "ClickHouse database (env TALLY_RUN_CLICKHOUSE_DATABASE)")
	fs.StringVar(&cfg.EmbedClickHouseAddr, "clickhouse-addr", envOr("TALLY_RUN_CLICKHOUSE_ADDR", "127.0.0.1:8123"), "embedded ClickHouse HTTP endpoint address (env TALLY_RUN_CLICKHOUSE_ADDR)")
	fs.StringVar(&cfg.AdmitterAddr, "admitter-addr", envOr("ADMITTER_LISTEN_ADDR", "127.0.0.1:8081"), "admitter address")
	fs.StringVar(&cfg.LedgerAddr, "ledger-addr", envOr("LEDGER_LISTEN_ADDR", "127.0.0.1:8082"), "ledger address")
	fs.StringVar(&cfg.SinkAddr, "sink-addr", envOr("SINK_LISTEN_ADDR", "127.0.0.1:8083"), "sink address (metrics, health)")
	fs.StringVar(&cfg.APIKey, "api-key", os.Getenv("TALLY_RUN_API_KEY"), "edge API key to accept (env TALLY_RUN_API_KEY; default: generated once and kept in the data directory's keys.env)")
	fs.StringVar(&cfg.AdminToken, "admin-token", os.Getenv("TALLY_RUN_ADMIN_TOKEN"), "admin token to accept (env TALLY_RUN_ADMIN_TOKEN; default: generated once and kept in keys.env)")
	fs.StringVar(&cfg.ClickHouseUser, "clickhouse-user", os.Getenv("TALLY_RUN_CLICKHOUSE_USER"), "the embedded ClickHouse endpoint's writer user, the sink's: inserts into its tables only; or the user to log in as to -clickhouse-server (env TALLY_RUN_CLICKHOUSE_USER; default tally on the embedded endpoint)")
	fs.StringVar(&cfg.ClickHousePassword, "clickhouse-password", os.Getenv("TALLY_RUN_CLICKHOUSE_PASSWORD"), "its password, at least 16 bytes on the embedded endpoint (env TALLY_RUN_CLICKHOUSE_PASSWORD; default there: generated once and kept in keys.env)")
	fs.StringVar(&cfg.ClickHouseAnalystUser, "clickhouse-analyst-user", os.Getenv("TALLY_RUN_CLICKHOUSE_ANALYST_USER"), "the embedded ClickHouse endpoint's read-only user, which tallyctl's other commands use (env TALLY_RUN_CLICKHOUSE_ANALYST_USER; default analyst)")
	fs.StringVar(&cfg.ClickHouseAnalystPassword, "clickhouse-analyst-password", os.Getenv("TALLY_RUN_CLICKHOUSE_ANALYST_PASSWORD"), "its password, at least 16 bytes (env TALLY_RUN_CLICKHOUSE_ANALYST_PASSWORD; default: generated once and kept in keys.env)")
	fs.StringVar(&cfg.PriceBookPath, "pricebook", os.Getenv("TALLY_PRICEBOOK_PATH"), "price book file (default: built in)")
	fs.StringVar(&cfg.WebhookURL, "webhook-url", os.Getenv("TALLY_RUN_WEBHOOK_URL"), "post the notifications topic to this URL as signed webhooks (env TALLY_RUN_WEBHOOK_URL; the HMAC secret is generated once and kept in keys.env as TALLY_WEBHOOK_SECRET)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	if f.ephemeral && f.brokers != "" && os.Getenv("KAFKA_BROKERS") != f.brokers {
		return usageError{"-ephemeral runs the embedded broker: drop -kafka-brokers"}
	}
	if !f.ephemeral {
		if f.brokers == "" {
			return usageError{"tallyctl run keeps its data, so it needs a real Kafka: -kafka-brokers host:port " +
				"(`make run` starts one with deployments/kafka.sh, its log in the data directory), or -ephemeral for an in-memory demo"}
		}
		b, err := kafkax.ParseBrokers(f.brokers)
		if err != nil {
			return usageError{"-kafka-brokers: " + err.Error()}
		}
		cfg.Brokers = b
	}
	cfg.ClickHouseAddr, cfg.ClickHouseDatabase = f.chServer, f.chDatabase
	if cfg.PriceBookPath != "" {
		abs, err := filepath.Abs(cfg.PriceBookPath)
		if err != nil {
			return err
		}
		cfg.PriceBookPath = abs
	}
	dir, err := filepath.Abs(f.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if !f.ephemeral {
		cfg.DataDir = dir
		cfg.CustomerKeysFile = filepath.Join(dir, customerKeysFileName)
	} else { // its keys are made with this run's key-hash secret: useless to the next run
		cfg.CustomerKeysFile = filepath.Join(dir, "ephemeral-"+customerKeysFileName)
		_ = os.Remove(cfg.CustomerKeysFile)
		defer os.Remove(cfg.CustomerKeysFile)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := stack.Start(ctx, *cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	keysFile := st.KeysFile
	if f.ephemeral { // the other commands still need this run's keys while it runs
		keysFile = filepath.Join(dir, "ephemeral-"+stack.KeysFileName)
		_ = os.Remove(keysFile)
		if err := writeKeys(keysFile, st); err != nil {
			return err
		}
		defer os.Remove(keysFile)
	}
	if err := runinfo.Write(dir, runInfo(st, f.ephemeral, keysFile, cfg.TopicPrefix, cfg.PriceBookPath)); err != nil {
		return err
	}
	defer runinfo.Remove(dir)
	printBanner(stdout, st, f.ephemeral, f.chServer != "", dir)
	if err := st.Wait(ctx); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\ntally: stopping")
	return nil
}

// customerKeysFileName is the ledger's customer keys file in the data directory
// (`tallyctl customer-key` appends to it).
const customerKeysFileName = "customer-keys"

// lockDir holds an exclusive lock on the data directory while the stack runs: two stacks on
// one ClickHouse data path would corrupt it.
func lockDir(dir string) (func(), error) {
	lf, err := os.OpenFile(filepath.Join(dir, "run.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lf.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another tallyctl run uses the data directory %s", dir)
		}
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	return func() { _ = lf.Close() }, nil
}

// writeKeys writes an ephemeral stack's keys for the other commands (0600).
func writeKeys(path string, st *stack.Stack) error {
	keys, err := secretfile.Open(path)
	if err != nil {
		return err
	}
	kept := map[string]string{stack.APIKeyName: st.APIKey, stack.AdminTokenName: st.AdminToken,
		stack.KeyHashSecretName: st.KeyHashSecret}
	if st.WebhookSecret != "" {
		kept[stack.WebhookSecretName] = st.WebhookSecret
	}
	for name, v := range kept {
		if _, err := keys.Get(name, func() (string, error) { return v, nil }); err != nil {
			return err
		}
	}
	return nil
}

// runInfo is what the other commands need to reach this stack.
func runInfo(st *stack.Stack, ephemeral bool, keysFile, prefix, pricebook string) runinfo.Info {
	chAddr := strings.TrimPrefix(strings.TrimPrefix(st.ClickHouse, "http://"), "https://")
	env := map[string]string{
		"KAFKA_BROKERS":        strings.Join(st.Brokers, ","),
		"TALLY_TOPIC_PREFIX":   prefix,
		"TALLY_LEDGER_URL":     st.LedgerURL,
		"TALLY_ADMITTER_URL":   st.AdmitterURL,
		"CLICKHOUSE_ADDR":      chAddr,
		"CLICKHOUSE_PROTOCOL":  "http",
		"CLICKHOUSE_DATABASE":  st.ClickHouseDatabase,
		"CLICKHOUSE_USER":      chUser(st),
		"TALLY_PRICEBOOK_PATH": pricebook,
		// `tallyctl customer-key` appends there.
		"LEDGER_CUSTOMER_KEYS_FILE": st.CustomerKeysFile,
	}
	return runinfo.Info{PID: os.Getpid(), Ephemeral: ephemeral, Env: env, KeysFile: keysFile}
}

// chUser is the ClickHouse user tallyctl's other commands log in as: on the embedded endpoint
// its read-only analyst (the password is kept in the keys file as CLICKHOUSE_PASSWORD), on a
// ClickHouse server the user given to tallyctl run.
func chUser(st *stack.Stack) string {
	if st.ClickHouseAnalystUser != "" {
		return st.ClickHouseAnalystUser
	}
	return st.ClickHouseUser
}

func printBanner(w io.Writer, st *stack.Stack, ephemeral, externalCH bool, dir string) {
	ch, kept := "embedded ClickHouse", "ClickHouse data, "
	if externalCH {
		ch, kept = "ClickHouse server", ""
	}
	where := fmt.Sprintf(`Kafka at %s, %s at %s.
Data lives in %s (%skeys in %s, 0600); `+"`make run`"+` keeps the Kafka
log there too. It survives restarts; delete the directory to start over.
tallyctl's other commands find this stack through %s/run.json.`,
		strings.Join(st.Brokers, ","), ch, st.ClickHouse, dir, kept, st.KeysFile, dir)
	if ephemeral {
		where = fmt.Sprintf(`embedded Kafka at %s, %s at %s.
-ephemeral: the log lives in memory and is gone when it stops (make run keeps it).`, st.Brokers[0], ch, st.ClickHouse)
	}
	fmt.Fprintf(w, `Tally is running on this machine: %s

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
  tallyctl statement -account acct_1
  TALLY_CUSTOMER_KEY=$(tallyctl customer-key -account acct_1)   (read-only, this account only)
  curl -s %s/v1/customer/accounts/acct_1 -H "Authorization: Bearer $TALLY_CUSTOMER_KEY"

Ctrl-C stops it.
`, where, st.AdmitterURL, st.LedgerURL, st.SinkURL, st.ClickHouse, st.APIKey, st.AdminToken,
		st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword, st.LedgerURL, st.AdmitterURL, st.AdmitterURL, st.LedgerURL, st.ClickHouse, st.LedgerURL)
	if st.WebhookSecret != "" {
		fmt.Fprintf(w, "\nWebhooks are on (-webhook-url): each notification is POSTed signed (Tally-Signature) with\n  export %s=%s\n",
			stack.WebhookSecretName, st.WebhookSecret)
	}
}

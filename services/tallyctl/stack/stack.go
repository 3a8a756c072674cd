// Package stack runs the whole Tally pipeline in one process: a Kafka broker (the embedded
// kfake, or real brokers), the embedded ClickHouse endpoint (or a real server), the ledger,
// the sink and the admitter. `tallyctl run` and the end-to-end tests use it.
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	chschema "github.com/tallyhq/tally/schemas/clickhouse"
	"github.com/tallyhq/tally/services/admitter"
	"github.com/tallyhq/tally/services/ledger"
	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/services/sink"
	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/tallyctl/internal/secretfile"
	"github.com/tallyhq/tally/shared/chembed"
	"github.com/tallyhq/tally/shared/httpx"
	"github.com/tallyhq/tally/shared/kafkax"
	"github.com/tallyhq/tally/shared/pricebook"
)

// KeysFileName is the secrets file in a data directory (see secretfile).
const KeysFileName = "keys.env"

// Names of the kept secrets in the keys file (environment variable names, so that the file
// can be loaded by a shell and by tallyctl's other commands).
const (
	APIKeyName     = "TALLY_API_KEY"
	AdminTokenName = "TALLY_ADMIN_TOKEN"
	// KeyHashSecretName is the services' key-hash secret (ADMITTER_/LEDGER_KEY_HASH_SECRET).
	KeyHashSecretName = "TALLY_KEY_HASH_SECRET"
	// ClickHouseAnalystPasswordName is the embedded endpoint's read-only analyst's password,
	// under the name tallyctl's commands read it by (CLICKHOUSE_PASSWORD, with run.json's
	// CLICKHOUSE_USER).
	ClickHouseAnalystPasswordName = "CLICKHOUSE_PASSWORD"
	// ClickHouseWriterPasswordName is the embedded endpoint's writer's (the sink's) password.
	ClickHouseWriterPasswordName = "TALLY_CLICKHOUSE_WRITER_PASSWORD"
	// WebhookSecretName is the webhooks' HMAC secret (generated only with a WebhookURL); the
	// ledger reads it from WebhookSecretFileName (mode 0600), written from it at every start.
	WebhookSecretName = "TALLY_WEBHOOK_SECRET"
)

// WebhookSecretFileName is the ledger's LEDGER_WEBHOOK_SECRET_FILE in a data directory.
const WebhookSecretFileName = "webhook.secret"

// Config describes one single-process pipeline.
type Config struct {
	// DataDir, when set, keeps the pipeline's state across restarts: the embedded ClickHouse
	// engine's data in DataDir/clickhouse, and the generated secrets in DataDir/keys.env
	// (mode 0600, generated once). It needs real Kafka brokers (the log lives there; the
	// embedded broker keeps nothing). "" = nothing kept: ClickHouse in a temporary directory,
	// secrets generated at every start.
	DataDir string
	// Brokers are real Kafka brokers; empty starts the embedded kfake broker on KafkaAddr.
	Brokers []string
	// KafkaAddr is where the embedded broker listens (default 127.0.0.1:19092).
	KafkaAddr   string
	TopicPrefix string
	// Partitions of every topic the stack creates (default 4).
	Partitions int
	// ClickHouseAddr is a ClickHouse HTTP endpoint to use; empty starts the embedded one on
	// EmbedClickHouseAddr.
	ClickHouseAddr      string
	EmbedClickHouseAddr string
	ClickHouseDatabase  string
	// ClickHouseUser and ClickHousePassword are the sink's credentials. On the embedded
	// endpoint they name its writer user (chembed.RoleWriter: inserts into the sink's tables
	// and the sink's own migrations, nothing else; default user "tally", password generated).
	// With ClickHouseAddr they are the real server's ("" = user "default", no password).
	ClickHouseUser, ClickHousePassword string
	// ClickHouseAnalystUser and ClickHouseAnalystPassword are the embedded endpoint's
	// read-only user (chembed.RoleAnalyst; default "analyst", password generated), for
	// analysts, Grafana and tallyctl sql. Unused with ClickHouseAddr.
	ClickHouseAnalystUser, ClickHouseAnalystPassword string
	// Listen addresses of the services (port 0 = any free port).
	AdmitterAddr, LedgerAddr, SinkAddr string
	// APIKey and AdminToken are plaintext secrets; empty ones are generated. The API key
	// starts with "tk_", the admin token with "ta_", and they differ. They are handed to the
	// services only as HMAC-SHA256 digests under KeyHashSecret.
	APIKey, AdminToken string
	// KeyHashSecret is the services' key-hash secret (ADMITTER_/LEDGER_KEY_HASH_SECRET, at
	// least 32 bytes); empty = generated.
	KeyHashSecret string
	// CustomerKeysFile, when set, is the ledger's customer keys file (LEDGER_CUSTOMER_KEYS_FILE,
	// created empty with mode 0600 if missing; `tallyctl customer-key` appends to it), polled
	// every second. "" = no customer keys.
	CustomerKeysFile string
	// DetectIntervalMs is the abuse detector's schedule (0 = the sink's default).
	DetectIntervalMs int
	// PriceBookPath "" = the built-in price book.
	PriceBookPath string
	Logger        *slog.Logger
	// WebhookURL, when set, turns the ledger's webhook dispatcher on (LEDGER_WEBHOOK_URL);
	// WebhookSecret is its HMAC secret ("" = generated; kept in keys.env with a DataDir).
	WebhookURL, WebhookSecret string
	// Tune, when set, adjusts the services' settings after the stack has filled them in
	// (tests use it for thresholds).
	Tune func(a *admitter.Config, l *ledger.Config, s *sink.Config)
}

// Stack is a running pipeline.
type Stack struct {
	Brokers                                     []string
	Topics                                      kafkax.Topics
	AdmitterURL, LedgerURL, SinkURL, ClickHouse string
	ClickHouseDatabase                          string
	// ClickHouseUser and ClickHousePassword are the sink's (writer's) ClickHouse credentials
	// ("" = none); ClickHouseAnalyst* the embedded endpoint's read-only user's.
	ClickHouseUser, ClickHousePassword               string
	ClickHouseAnalystUser, ClickHouseAnalystPassword string
	APIKey, AdminToken                               string
	// WebhookSecret is the webhooks' HMAC secret ("" without Config.WebhookURL).
	WebhookSecret string
	// KeyHashSecret is the services' key-hash secret (customer keys are made with it).
	KeyHashSecret string
	// CustomerKeysFile is the ledger's customer keys file ("" = none).
	CustomerKeysFile string
	Book             *pricebook.Book
	// FoldConfig is the ledger's fold configuration, for replays that must match it.
	FoldConfig fold.Config
	// KeysFile is where the secrets are kept ("" without a data directory).
	KeysFile string

	Admitter *admitter.Service
	Ledger   *ledger.Service
	Sink     *sink.Service

	cancel  context.CancelFunc
	errs    chan error
	running int
	closers []func()
}

// Start starts every part, in dependency order, and returns once each is ready.
func Start(ctx context.Context, cfg Config) (st *Stack, err error) {
	var keys *secretfile.File
	if cfg.DataDir != "" {
		if len(cfg.Brokers) == 0 {
			return nil, errors.New("stack: a data directory needs real Kafka brokers: the embedded broker keeps nothing, so balances and the journal would be lost at the next start")
		}
		if keys, err = keepSecrets(&cfg); err != nil {
			return nil, fmt.Errorf("stack: %w", err)
		}
	}
	cfg = withDefaults(cfg)
	if err := checkSecrets(cfg); err != nil {
		return nil, err
	}
	book, err := pricebook.LoadOrDefault(cfg.PriceBookPath)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	st = &Stack{cancel: cancel, errs: make(chan error, 4), Book: book, APIKey: cfg.APIKey, AdminToken: cfg.AdminToken,
		KeyHashSecret: cfg.KeyHashSecret, CustomerKeysFile: cfg.CustomerKeysFile, ClickHouseDatabase: cfg.ClickHouseDatabase}
	defer func() {
		if err != nil {
			st.Close()
			st = nil
		}
	}()
	if keys != nil {
		st.KeysFile = keys.Path()
	}
	log := cfg.Logger

	// Kafka.
	if len(cfg.Brokers) == 0 {
		_, port, _ := net.SplitHostPort(cfg.KafkaAddr)
		p, _ := strconv.Atoi(port)
		fake, ferr := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(p), kfake.DefaultNumPartitions(cfg.Partitions))
		if ferr != nil {
			return st, fmt.Errorf("stack: embedded Kafka on %s: %w", cfg.KafkaAddr, ferr)
		}
		st.closers = append(st.closers, fake.Close)
		cfg.Brokers = fake.ListenAddrs()
	}
	st.Brokers = cfg.Brokers
	st.Topics = kafkax.NewTopics(cfg.TopicPrefix)
	tctx, tcancel := context.WithTimeout(ctx, 60*time.Second)
	err = kafkax.EnsureTopics(tctx, st.Brokers, st.Topics.Specs(cfg.Partitions, 1))
	tcancel()
	if err != nil {
		return st, fmt.Errorf("stack: %w", err)
	}

	brokers := strings.Join(st.Brokers, ",")

	// Ledger: folds the events, publishes balances and limits.
	lc := ledger.DefaultConfig()
	lc.Brokers, lc.TopicPrefix, lc.ListenAddr, lc.PriceBookPath = brokers, cfg.TopicPrefix, cfg.LedgerAddr, cfg.PriceBookPath
	lc.AdminKeys = "admin:hmac:" + httpx.HMACKey([]byte(cfg.KeyHashSecret), cfg.AdminToken)
	lc.KeyHashSecret = cfg.KeyHashSecret
	if cfg.CustomerKeysFile != "" {
		// Created (0600) if missing, so that the ledger starts with no customer keys yet.
		f, ferr := os.OpenFile(cfg.CustomerKeysFile, os.O_CREATE|os.O_RDONLY, 0o600)
		if ferr != nil {
			return st, fmt.Errorf("stack: customer keys file: %w", ferr)
		}
		_ = f.Close()
		lc.CustomerKeysFile, lc.CustomerKeysPollMs = cfg.CustomerKeysFile, 1000
	}
	lc.TopicPartitions = cfg.Partitions
	lc.Group = cfg.TopicPrefix + "ledger"
	lc.Book = book
	lc.Logger = log.With("service", "ledger")
	if cfg.WebhookURL != "" {
		if lc.Webhook.SecretFile, err = writeWebhookSecret(cfg.DataDir, cfg.WebhookSecret, st); err != nil {
			return st, fmt.Errorf("stack: webhook secret: %w", err)
		}
		lc.Webhook.URL, lc.Webhook.Group = cfg.WebhookURL, cfg.TopicPrefix+"webhook"
		st.WebhookSecret = cfg.WebhookSecret
	}
	sc := sink.DefaultConfig()
	ac := admitter.DefaultConfig()
	if cfg.Tune != nil {
		cfg.Tune(&ac, &lc, &sc)
	}
	st.FoldConfig = lc.FoldConfig(book)

	// ClickHouse: the embedded endpoint answers only its two users.
	chAddr := cfg.ClickHouseAddr
	if chAddr == "" {
		ddl, derr := chstore.DDL(chschema.Migrations, sc.RetentionDays)
		if derr != nil {
			return st, fmt.Errorf("stack: %w", derr)
		}
		chc := chembed.Config{Users: []chembed.User{
			{Name: cfg.ClickHouseAnalystUser, Password: cfg.ClickHouseAnalystPassword, Role: chembed.RoleAnalyst},
			{Name: cfg.ClickHouseUser, Password: cfg.ClickHousePassword, Role: chembed.RoleWriter,
				InsertTables: chstore.Tables, DDL: ddl},
		}}
		if cfg.DataDir != "" {
			chc.DataPath = filepath.Join(cfg.DataDir, "clickhouse")
		}
		srv, cerr := chembed.Start(chc, cfg.EmbedClickHouseAddr)
		if cerr != nil {
			return st, fmt.Errorf("stack: embedded ClickHouse: %w", cerr)
		}
		st.closers = append(st.closers, func() { _ = srv.Close() })
		chAddr = srv.Addr()
		st.ClickHouseAnalystUser, st.ClickHouseAnalystPassword = cfg.ClickHouseAnalystUser, cfg.ClickHouseAnalystPassword
	}
	st.ClickHouse = "http://" + chAddr
	st.ClickHouseUser, st.ClickHousePassword = cfg.ClickHouseUser, cfg.ClickHousePassword
	if st.Ledger, err = ledger.New(lc); err != nil {
		return st, err
	}
	st.goRun(runCtx, "ledger", st.Ledger.Run)
	actx, acancel := context.WithTimeout(ctx, 60*time.Second)
	st.LedgerURL, err = st.Ledger.URL(actx) // https:// when Tune set LEDGER_TLS_*
	acancel()
	if err != nil {
		return st, st.failed("ledger", err)
	}

	// Sink: stores every event in ClickHouse and runs the detector.
	sc.Brokers, sc.TopicPrefix, sc.ListenAddr = brokers, cfg.TopicPrefix, cfg.SinkAddr
	sc.GroupID = cfg.TopicPrefix + "sink"
	sc.ClickHouse.Addr, sc.ClickHouse.Protocol, sc.ClickHouse.Database = chAddr, "http", cfg.ClickHouseDatabase
	if cfg.ClickHouseUser != "" {
		sc.ClickHouse.User, sc.ClickHouse.Password = cfg.ClickHouseUser, cfg.ClickHousePassword
	}
	sc.BatchWaitMs = 100
	if cfg.DetectIntervalMs != 0 {
		sc.Detect.IntervalMs = cfg.DetectIntervalMs
	}
	if st.Sink, err = sink.New(sc, log); err != nil {
		return st, err
	}
	st.goRun(runCtx, "sink", st.Sink.Run)
	if err = st.wait(ctx, "sink", st.Sink.Ready()); err != nil {
		return st, err
	}
	st.SinkURL = st.Sink.URL()

	// Admitter: the edge API.
	ac.KafkaBrokers, ac.TopicPrefix, ac.ListenAddr, ac.PriceBookPath = brokers, cfg.TopicPrefix, cfg.AdmitterAddr, cfg.PriceBookPath
	ac.APIKeys = "dev:hmac:" + httpx.HMACKey([]byte(cfg.KeyHashSecret), cfg.APIKey)
	ac.KeyHashSecret = cfg.KeyHashSecret
	ac.InstanceID = "local"
	if st.Admitter, err = admitter.New(ac, log.With("service", "admitter")); err != nil {
		return st, err
	}
	st.goRun(runCtx, "admitter", st.Admitter.Run)
	if err = st.wait(ctx, "admitter", st.Admitter.Ready()); err != nil {
		return st, err
	}
	st.AdmitterURL = st.Admitter.URL()
	return st, nil
}

func (st *Stack) goRun(ctx context.Context, name string, run func(context.Context) error) {
	st.running++
	go func() {
		err := run(ctx)
		if err != nil && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%s: %w", name, err)
		} else {
			err = nil
		}
		st.errs <- err
	}()
}

func (st *Stack) wait(ctx context.Context, name string, ready <-chan struct{}) error {
	t := time.NewTimer(90 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case err := <-st.errs:
		st.running--
		return st.failed(name, err)
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("stack: %s not ready after 90s", name)
	}
}

func (st *Stack) failed(name string, err error) error {
	if err == nil {
		err = errors.New("stopped")
	}
	return fmt.Errorf("stack: %s did not start: %w", name, err)
}

// Wait blocks until ctx ends or a service fails, and returns that failure.
func (st *Stack) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-st.errs:
		st.running--
		if err == nil {
			err = errors.New("a service stopped")
		}
		return err
	}
}

// Close stops the services (they stop in reverse order of their dependencies as their
// contexts end), then ClickHouse and Kafka.
func (st *Stack) Close() {
	st.cancel()
	for ; st.running > 0; st.running-- {
		select {
		case <-st.errs:
		case <-time.After(30 * time.Second):
			st.running = 0
		}
	}
	for i := len(st.closers) - 1; i >= 0; i-- {
		st.closers[i]()
	}
	st.closers = nil
}

// keepSecrets fills the secrets c leaves empty from the data directory's keys file,
// generating each once. A secret given in c is used as given and not written down.
func keepSecrets(c *Config) (*secretfile.File, error) {
	keys, err := secretfile.Open(filepath.Join(c.DataDir, KeysFileName))
	if err != nil {
		return nil, err
	}
	for _, s := range secrets(c) {
		if *s.v != "" {
			continue
		}
		if *s.v, err = keys.Get(s.name, s.gen); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// secret is one generated secret of a Config: its field, its name in the keys file and how
// it is made.
type secret struct {
	v    *string
	name string
	gen  func() (string, error)
}

// secrets lists c's generated secrets, for keepSecrets (generated once, kept) and
// withDefaults (generated at every start). The embedded endpoint's writer (the sink) is user
// "tally" with a generated password; a ClickHouse server's credentials are the operator's,
// and are neither generated nor kept.
func secrets(c *Config) []secret {
	list := []secret{
		{&c.APIKey, APIKeyName, secretfile.RandomHex("tk_", 16)},
		{&c.AdminToken, AdminTokenName, secretfile.RandomHex("ta_", 16)},
		{&c.KeyHashSecret, KeyHashSecretName, secretfile.RandomHex("", 32)},
		{&c.ClickHouseAnalystPassword, ClickHouseAnalystPasswordName, secretfile.RandomHex("tc_", 16)},
	}
	if c.ClickHouseAddr == "" && c.ClickHouseUser == "" {
		c.ClickHouseUser = "tally"
		list = append(list, secret{&c.ClickHousePassword, ClickHouseWriterPasswordName, secretfile.RandomHex("tc_", 16)})
	}
	if c.WebhookURL != "" {
		list = append(list, secret{&c.WebhookSecret, WebhookSecretName, secretfile.RandomHex("", 32)})
	}
	return list
}

// writeWebhookSecret writes secret to the file the ledger reads it from, mode 0600: in the
// data directory, or in a temporary directory removed when the stack closes.
func writeWebhookSecret(dataDir, secret string, st *Stack) (string, error) {
	dir := dataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "tally-webhook-")
		if err != nil {
			return "", err
		}
		st.closers = append(st.closers, func() { os.RemoveAll(tmp) })
		dir = tmp
	}
	p := filepath.Join(dir, WebhookSecretFileName)
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		return "", err
	}
	return p, os.Chmod(p, 0o600) // WriteFile keeps an existing file's mode
}

func withDefaults(c Config) Config {
	if c.KafkaAddr == "" {
		c.KafkaAddr = "127.0.0.1:19092"
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = kafkax.DefaultPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = 4
	}
	if c.EmbedClickHouseAddr == "" {
		c.EmbedClickHouseAddr = "127.0.0.1:8123"
	}
	if c.ClickHouseDatabase == "" {
		c.ClickHouseDatabase = "default"
	}
	for _, a := range []*string{&c.AdmitterAddr, &c.LedgerAddr, &c.SinkAddr} {
		if *a == "" {
			*a = "127.0.0.1:0"
		}
	}
	if c.ClickHouseAnalystUser == "" {
		c.ClickHouseAnalystUser = "analyst"
	}
	for _, s := range secrets(&c) {
		if *s.v == "" {
			*s.v, _ = s.gen() // crypto/rand does not fail on Linux
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// checkSecrets refuses an edge key that is also the admin token, keys without their role's
// prefix, and ClickHouse passwords that repeat another secret.
func checkSecrets(c Config) error {
	var errs []error
	if c.APIKey == c.AdminToken {
		errs = append(errs, errors.New("the API key and the admin token are the same secret: each role needs its own"))
	}
	if !strings.HasPrefix(c.APIKey, admitter.EdgeKeyPrefix) {
		errs = append(errs, fmt.Errorf("the API key must start with %q", admitter.EdgeKeyPrefix))
	}
	if !strings.HasPrefix(c.AdminToken, ledger.AdminKeyPrefix) {
		errs = append(errs, fmt.Errorf("the admin token must start with %q", ledger.AdminKeyPrefix))
	}
	for _, pw := range []string{c.ClickHousePassword, c.ClickHouseAnalystPassword} {
		if pw != "" && (pw == c.APIKey || pw == c.AdminToken) {
			errs = append(errs, errors.New("a ClickHouse password repeats the API key or the admin token"))
		}
	}
	if c.ClickHouseAddr == "" && c.ClickHousePassword == c.ClickHouseAnalystPassword {
		errs = append(errs, errors.New("the ClickHouse writer and analyst passwords are the same"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	return nil
}

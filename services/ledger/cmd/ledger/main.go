// Command ledger runs Tally's credit ledger: it parses the environment, validates every
// setting (refusing to start on a bad one), wires the service by hand and runs it until
// SIGINT or SIGTERM, then stops in reverse order.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/services/ledger"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("ledger: exit", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	var cfg ledger.Config
	if err := env.Parse(&cfg); err != nil {
		return fmt.Errorf("parse settings: %w", err)
	}
	cfg.Logger = log
	svc, err := ledger.New(cfg) // validates
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return svc.Run(ctx)
}

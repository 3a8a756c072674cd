// Command ledger runs Tally's credit ledger: it parses the environment, validates every
// setting (refusing to start on a bad one), wires the service by hand and runs it until
// SIGINT or SIGTERM, then stops in reverse order. SIGHUP re-reads the customer keys file.
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
	// SIGHUP re-reads LEDGER_CUSTOMER_KEYS_FILE now (it is also polled); a broken file is
	// logged and the keys in force stay.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := svc.ReloadCustomerKeys(); err != nil {
					log.Error("customer keys reload failed; previous keys stay", "err", err)
				} else {
					log.Info("customer keys reloaded", "keys", svc.CustomerKeys())
				}
			}
		}
	}()
	return svc.Run(ctx)
}

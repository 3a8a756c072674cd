// Command sink runs Tally's ClickHouse sink: parse the environment, validate, run until
// SIGINT/SIGTERM.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/services/sink"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg, err := env.ParseAs[sink.Config]()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sink: read settings:", err)
		os.Exit(2)
	}
	svc, err := sink.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := svc.Run(ctx); err != nil {
		log.Error("sink failed", "error", err)
		os.Exit(1)
	}
}

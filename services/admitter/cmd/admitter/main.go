// Command admitter runs Tally's edge admitter. Every setting comes from the environment (see
// the README); a bad setting or price book stops it with the reason before it serves.
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tallyhq/tally/services/admitter"
)

func main() {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg, err := admitter.ConfigFromEnv()
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		log.Error("admitter: bad settings", "err", err)
		os.Exit(2)
	}
	cfg.ApplyGC()
	svc, err := admitter.New(cfg, log)
	if err != nil {
		log.Error("admitter: cannot start", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go svc.ReloadOn(ctx, hup)
	if err := svc.Run(ctx); err != nil {
		log.Error("admitter: stopped with error", "err", err)
		os.Exit(1)
	}
}

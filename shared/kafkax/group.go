package kafkax

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/tallyhq/tally/shared/backoff"
)

// Group is a consumer group member that reads Topics from the first offset when the group is
// new (nothing kept may be skipped), with the session settings the ledger's consumers share:
// heartbeat 1 s, session and rebalance timeouts 10 s.
type Group struct {
	ID      string
	Brokers []string
	Topics  []string
	TLS     *tls.Config
	// Retry is the pause after a failed join or a failed generation.
	Retry time.Duration
	// Name prefixes the log lines and errors ("ledger", "webhook").
	Name string
	Log  *slog.Logger
}

// Run joins the group and calls gen for every generation, until ctx ends: gen gets a context
// that ends with the generation (a rebalance) or with ctx, whichever comes first, and returns
// when it has ended; an error from it is logged and the member rejoins after Retry. Run
// returns nil when ctx ends, or the error of creating the group.
func (g Group) Run(ctx context.Context, gen func(ctx context.Context, gen *kafka.Generation) error) error {
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: g.ID, Brokers: g.Brokers, Topics: g.Topics,
		StartOffset: kafka.FirstOffset, HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second,
		RebalanceTimeout: 10 * time.Second, JoinGroupBackoff: time.Second, Timeout: 10 * time.Second,
		Dialer: Dialer(g.TLS),
	})
	if err != nil {
		return fmt.Errorf("%s: consumer group: %w", g.Name, err)
	}
	defer group.Close()
	for {
		kg, err := group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			g.Log.Warn(g.Name+": join group", "err", err)
			if !backoff.Sleep(ctx, g.Retry) {
				return nil
			}
			continue
		}
		done := make(chan error, 1)
		kg.Start(func(gctx context.Context) {
			genCtx, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(gctx, cancel)
			defer func() { stop(); cancel() }()
			done <- gen(genCtx, kg)
		})
		err = <-done
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			g.Log.Error(g.Name+": generation failed; rejoining", "err", err)
			if !backoff.Sleep(ctx, g.Retry) {
				return nil
			}
		}
	}
}

package client_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/services/admitter/client"
	"github.com/tallyhq/tally/shared/events"
)

func Example() {
	c, err := client.New(client.Config{BaseURL: admitterURL, APIKey: apiKey})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Before the model runs: 1k tokens in, 1k out on codex = 7,500 micro-credits held.
	adm, err := c.Admit(ctx, api.AdmitRequest{RequestID: "example-1", AccountID: "acme",
		Endpoint: "codex.responses", Estimate: events.Units{TokensIn: 1000, TokensOut: 1000}})
	var denied *client.DeniedError
	if errors.As(err, &denied) {
		fmt.Println("denied:", denied.Reason, "retry after", denied.RetryAfter)
		return
	} else if err != nil {
		panic(err)
	}
	fmt.Println("allowed:", adm.Allowed, "funding:", adm.Funding, "hold:", adm.HoldMicros)

	// After it ran: the actual usage is priced and settled.
	fin, err := c.Finish(ctx, api.FinishRequest{RequestID: adm.RequestID, Status: "succeeded",
		Usage: events.Units{TokensIn: 1000, TokensOut: 500}, DurationMs: 850})
	if err != nil {
		panic(err)
	}
	fmt.Println("cost:", fin.CostMicros, "charged:", fin.ChargedMicros, "released:", fin.ReleasedMicros)
	// Output:
	// allowed: true funding: credits hold: 7500
	// cost: 4500 charged: 4500 released: 3000
}

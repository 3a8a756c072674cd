// Command tallyctl is Tally's operator CLI: it runs the whole pipeline on one machine, and
// gives finance and analysts their tools (statements, reconciliation, grants, SQL).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/tallyhq/tally/services/tallyctl/internal/runinfo"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"run":          {"run the whole pipeline on this machine (real Kafka, embedded ClickHouse; data kept in -data-dir), or -ephemeral in memory", cmdRun},
	"grant":        {"grant credits to an account through the ledger API", cmdGrant},
	"adjust":       {"post a signed finance adjustment through the ledger API", cmdAdjust},
	"account":      {"show an account, or update its tier/priority/suspension/organization/funding account (--tier/--priority/--suspended/--organization/--funding-account)", cmdAccount},
	"budget":       {"set (--micros) or remove (--remove) an organization's monthly budget for a project it funds", cmdBudget},
	"statement":    {"an account's statement: opening balance, every entry, closing balance", cmdStatement},
	"export":       {"an account's monthly usage and charges: every journal line of a UTC month and its totals, CSV or JSON", cmdExport},
	"reconcile":    {"replay the events topic from the start and compare with the ledger and ClickHouse", cmdReconcile},
	"sql":          {"run a ClickHouse query and print a table, CSV or JSON", cmdSQL},
	"hash-key":     {"print a key's setting entry, id:hmac:<hex>, from the key on stdin and TALLY_KEY_HASH_SECRET", cmdHashKey},
	"customer-key": {"make a customer key for one account (-account) or organisation (-org): append its entry to the ledger's customer keys file (-file), print the token once", cmdCustomerKey},
}

// usageError marks a bad command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(realMain(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		return 2
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tallyctl: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	if args[0] != "run" {
		// Settings the operator did not set come from the stack `tallyctl run` started.
		if _, _, err := runinfo.Apply(runinfo.DataDir()); err != nil {
			fmt.Fprintf(stderr, "tallyctl %s: the running stack's settings: %v\n", args[0], err)
			return 1
		}
	}
	err := c.run(ctx, args[1:], stdout, stderr)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tallyctl %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "tallyctl %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: tallyctl <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'tallyctl <command> -h' for a command's flags.")
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tallyctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// envOr returns the environment variable or a default.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

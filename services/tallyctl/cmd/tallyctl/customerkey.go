package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/tallyhq/tally/services/ledger/api"
	"github.com/tallyhq/tally/services/tallyctl/internal/secretfile"
	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// cmdCustomerKey makes a customer key: a "tcu_" token scoped to one account or organisation,
// whose entry (id:hmac:<hex>:account=<id> or :org=<id>, under TALLY_KEY_HASH_SECRET) it
// appends to the ledger's customer keys file (mode 0600, created if missing), and which it
// prints once: only its HMAC is kept. The ledger reloads the file when it changes
// (LEDGER_CUSTOMER_KEYS_POLL_MS).
func cmdCustomerKey(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("customer-key", stderr)
	account := fs.String("account", "", "the account the key reads")
	org := fs.String("org", "", "the organisation whose accounts the key reads")
	file := fs.String("file", os.Getenv("LEDGER_CUSTOMER_KEYS_FILE"), "the ledger's customer keys file (env LEDGER_CUSTOMER_KEYS_FILE; tallyctl run's by default)")
	id := fs.String("id", "", "the key's id (default: generated, c-<hex>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	if (*account == "") == (*org == "") {
		return usageError{"customer-key: give exactly one of -account and -org"}
	}
	if *file == "" {
		return usageError{"customer-key: -file: the ledger's LEDGER_CUSTOMER_KEYS_FILE (no running stack gave one)"}
	}
	scope := "account=" + *account
	if *org != "" {
		scope = "org=" + *org
	}
	if _, err := api.ParseScope(scope); err != nil {
		return usageError{"customer-key: " + err.Error()}
	}
	if *id == "" {
		v, err := secretfile.RandomHex("c-", 6)()
		if err != nil {
			return err
		}
		*id = v
	}
	if err := events.CheckID("id", *id); err != nil || strings.ContainsAny(*id, ":,#") {
		return usageError{"customer-key: -id: an id without ':', ',' or '#'"}
	}
	secret := os.Getenv("TALLY_KEY_HASH_SECRET")
	if len(secret) < httpx.HashSecretBytesMin {
		return fmt.Errorf("customer-key: TALLY_KEY_HASH_SECRET (the ledger's LEDGER_KEY_HASH_SECRET): at least %d bytes", httpx.HashSecretBytesMin)
	}
	token, err := secretfile.RandomHex(api.CustomerKeyPrefix, 16)()
	if err != nil {
		return err
	}
	entry := *id + ":hmac:" + httpx.HMACKey([]byte(secret), token) + ":" + scope + "\n"
	if err := appendCustomerKey(*file, entry, []byte(secret)); err != nil {
		return fmt.Errorf("customer-key: %w", err)
	}
	fmt.Fprintf(stderr, "customer key %s (%s) added to %s; the ledger picks it up within LEDGER_CUSTOMER_KEYS_POLL_MS. The token is shown once:\n", *id, scope, *file)
	fmt.Fprintln(stdout, token)
	return nil
}

// appendCustomerKey appends entry to the keys file after checking that the file with it still
// parses as the ledger reads it (a repeated id is refused before anything is written). The
// file is created 0600, and an existing one is made 0600.
func appendCustomerKey(path, entry string, secret []byte) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		entry = "\n" + entry
	}
	if len(old)+len(entry) > api.CustomerKeysFileBytesMax {
		return fmt.Errorf("%s would exceed %d bytes", path, api.CustomerKeysFileBytesMax)
	}
	if _, err := api.ParseCustomerKeys(string(old)+entry, secret, nil); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.WriteString(entry); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tallyhq/tally/shared/events"
	"github.com/tallyhq/tally/shared/httpx"
)

// cmdHashKey prints the ADMITTER_API_KEYS / LEDGER_ADMIN_KEYS entry of one key: the key is
// read from stdin (never a flag, which would land in the shell history and ps), the secret
// from TALLY_KEY_HASH_SECRET (the service's ADMITTER_/LEDGER_KEY_HASH_SECRET).
func cmdHashKey(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("hash-key", stderr)
	id := fs.String("id", "", "the key's id, recorded in events (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := events.CheckID("id", *id); err != nil || strings.Contains(*id, ":") || strings.Contains(*id, ",") {
		return usageError{"hash-key: -id: an id without ':' or ','"}
	}
	secret := os.Getenv("TALLY_KEY_HASH_SECRET")
	if len(secret) < httpx.HashSecretBytesMin {
		return fmt.Errorf("hash-key: TALLY_KEY_HASH_SECRET: at least %d bytes", httpx.HashSecretBytesMin)
	}
	line, err := bufio.NewReader(io.LimitReader(os.Stdin, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	key := strings.TrimSpace(line)
	if key == "" {
		return errors.New("hash-key: no key on stdin")
	}
	if !strings.HasPrefix(key, "tk_") && !strings.HasPrefix(key, "ta_") {
		return errors.New(`hash-key: an edge key starts with "tk_", an admin token with "ta_"`)
	}
	fmt.Fprintf(stdout, "%s:hmac:%s\n", *id, httpx.HMACKey([]byte(secret), key))
	return nil
}

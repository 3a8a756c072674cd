// Package journal reads finance's view of the ledger journal from ClickHouse.
package journal

import (
	"context"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/services/ledger/finance"
)

// sumsSQL sums each account's customer lines; FINAL folds rows a ledger replay re-inserted
// with the same entry id.
const sumsSQL = `SELECT account_id,
	sumIf(amount_micros, ledger_account = 'customer.available'),
	sumIf(amount_micros, ledger_account = 'customer.held')
	FROM ledger_entries FINAL GROUP BY account_id`

// Sums returns, per account, Σ amount_micros of its customer.available and customer.held
// journal lines in ClickHouse: what `tallyctl reconcile` compares with the ledger.
func Sums(ctx context.Context, conn clickhouse.Conn) (map[string]finance.Balance, error) {
	rows, err := conn.Query(ctx, sumsSQL)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]finance.Balance{}
	for rows.Next() {
		var b finance.Balance
		if err := rows.Scan(&b.AccountID, &b.AvailableMicros, &b.HeldMicros); err != nil {
			return nil, err
		}
		out[b.AccountID] = b
	}
	return out, rows.Err()
}

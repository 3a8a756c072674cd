// Package journal reads finance's view of the ledger journal from ClickHouse.
package journal

import (
	"context"
	"fmt"

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

// doubleChargesSQL finds the requests charged by more than one transaction. A request is one
// (account_id, project_id, request_id): request ids are an account's own, and the projects an
// organization funds (whose lines are the organization's, naming the project) may use the
// same ones.
const doubleChargesSQL = `SELECT account_id, project_id, request_id, uniqExact(transaction_id) FROM ledger_entries FINAL
	WHERE request_id != '' AND kind IN ('charge', 'late_charge', 'unknown_finish_charge')
	GROUP BY account_id, project_id, request_id HAVING uniqExact(transaction_id) > 1
	ORDER BY account_id, project_id, request_id`

// DoubleCharge is a request charged by more than one transaction.
type DoubleCharge struct {
	AccountID, ProjectID, RequestID string
	Transactions                    uint64
}

func (d DoubleCharge) String() string {
	return fmt.Sprintf("request %s of account %s (project %q) charged by %d transactions", d.RequestID, d.AccountID, d.ProjectID, d.Transactions)
}

// DoubleCharges returns the requests of ledger_entries charged by more than one transaction
// (charge, late_charge, unknown_finish_charge), in account, project and request order: the
// fold charges a request once.
func DoubleCharges(ctx context.Context, conn clickhouse.Conn) ([]DoubleCharge, error) {
	rows, err := conn.Query(ctx, doubleChargesSQL)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []DoubleCharge
	for rows.Next() {
		var d DoubleCharge
		if err := rows.Scan(&d.AccountID, &d.ProjectID, &d.RequestID, &d.Transactions); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

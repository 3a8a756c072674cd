-- ledger_entries by project: an organization's journal lines of a project's (funded) request
-- name the project (ledger.entry's project_id): two projects of one organization may use the
-- same request id, so a request's lines are those of one (account_id, project_id,
-- request_id). '' on the lines of an account's own requests, on lines that are no request's,
-- and on rows written before 0013 (the ledger did not publish it then). The table's key
-- (account_id, entry_id) is unchanged: entry ids are unique without it.
-- ledger_entries_v (0006) is created again: the engine expanded its * when the view was
-- created, so it would not show the new column. 0002 and 0006 are applied and never edited.
ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS project_id String DEFAULT '' AFTER request_id;

CREATE OR REPLACE VIEW ledger_entries_v AS
SELECT *, toDecimal64(toDecimal128(amount_micros, 6) / 1000000, 6) AS amount_credits
FROM ledger_entries FINAL;

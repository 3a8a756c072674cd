-- Views for analysts: money as Decimal(18, 6) credits next to the Int64 micros, and the
-- ledger journal with replays folded.
CREATE VIEW IF NOT EXISTS ledger_entries_v AS
SELECT *, toDecimal64(toDecimal128(amount_micros, 6) / 1000000, 6) AS amount_credits
FROM ledger_entries FINAL;

CREATE VIEW IF NOT EXISTS requests_credits_v AS
SELECT *, toDecimal64(toDecimal128(cost_micros, 6) / 1000000, 6) AS cost_credits,
       toDecimal64(toDecimal128(hold_micros, 6) / 1000000, 6) AS hold_credits
FROM requests_v;

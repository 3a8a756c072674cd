package decide

// QuotePeer prices, without changing anything, the settlement of a request started in the
// events log by another admitter (or an earlier incarnation of this one) at costMicros, for a
// finish at nowMs: the finish policy of Quote over the start's funding, hold and allowance. An
// account this table does not know settles against an available balance of 0.
func (t *Table) QuotePeer(p *Peer, costMicros, nowMs int64) Settlement {
	a := &account{}
	if ai, ok := t.lookup(p.AccountID); ok {
		a = &t.accounts[ai]
	}
	return t.settle(a, p.Funding, p.HoldMicros, p.AllowanceMicros, p.StartedMs, costMicros, nowMs)
}

package decide

// QuotePeer prices, without changing anything, the settlement of a request started in the
// events log by another admitter (or an earlier incarnation of this one) at costMicros, for a
// finish at nowMs: the finish policy of Quote over the start's funding, hold and allowance, on
// the start's funding account when it names one. An account this table cannot hold settles
// against an available balance of 0.
func (t *Table) QuotePeer(p *Peer, costMicros, nowMs int64) Settlement {
	a := &account{}
	if _, mi, ok := t.peerAccounts(p); ok {
		a = &t.accounts[mi] // the funding account's, when the start names one
	}
	return t.settle(a, p.Funding, p.HoldMicros, p.AllowanceMicros, p.StartedMs, costMicros, nowMs)
}

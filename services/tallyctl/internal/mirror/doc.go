// Package mirror holds the tests that hold the admitter's settlement (services/admitter/decide)
// to the ledger's (services/ledger/fold): both apply the same funding waterfall, and the
// admitter's local view (the ledger's last balance plus its pending changes) must equal the
// ledger's fold of the same events.
package mirror

// Package chaos is Tally's fault suite: it builds the admitter, ledger and sink
// binaries, runs them as subprocesses against Kafka (real when KAFKA_BROKERS is set, the
// in-process kfake broker otherwise) and the embedded ClickHouse engine, drives a seeded
// workload through their public APIs, injects faults (SIGKILL, broker restarts, hostile
// messages, several admitters) and checks the outcome to the micro-credit against a
// reference computed by the pure ledger fold.
//
// The tests are behind the build tag "chaos":
//
//	cd services/tallyctl && go test -tags chaos -count=1 -timeout 30m -v ./chaos/
//
// Scenarios 7 and 8 (overload_test.go) check that the adaptive limit cannot lock an
// endpoint and that never-finished admits of one account cannot shut out the others or
// critical traffic; scenario 10 (TestFinishElsewhere, finishroute_test.go) that a finish is
// charged whichever admitter receives it, after a SIGKILL and restart included.
//
// Scenario 9 (TestIdleExpiry, clock_test.go) needs no workload: with no customer traffic, the
// ledger's clock ticks must release an abandoned hold and post an expired promotion to
// breakage within a bounded time, and the admitter must refuse a hold funded by a promotion
// whose expiry passed while the ledger was stopped.
//
// Each scenario prints a summary table and appends it to .out/chaos-summary.md at the repo
// root. Settings (environment): KAFKA_BROKERS (real brokers), CHDB_LIB_PATH (libchdb.so),
// CHAOS_SEED (workload seed, default 20261125), CHAOS_EVENTS (events of scenario 1, default
// 50000), CHAOS_RATE (scenario 1's pace in operations per second, default 250),
// CHAOS_LATE_DUPLICATES=0 (skip the two late-duplicate tests, which run by default),
// CHAOS_KEEP_LOGS=1 (print the service logs of every test and copy them to
// .out/chaos-logs/; failed tests always do).
package chaos

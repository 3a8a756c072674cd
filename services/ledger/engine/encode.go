package engine

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/events"
)

// The hot outputs (ledger.entry, balance.updated) are written with the events append writer
// (events.AppendEnvelopeHead and the payload appenders): encoding/json over the envelope and
// its json.RawMessage data was the largest cost of the ledger end to end. encode_test.go
// checks that the bytes equal json.Marshal's, and every consumer decodes them with
// events.Decode (strict).

// appendEntryEvent appends the ledger.entry event of en in transaction txID: the bytes of
// the event of en.EventInTx(txID), without building the event's strings (the entry id is
// derived into a stack buffer).
func appendEntryEvent(dst []byte, en *fold.Entry, txID []byte) []byte {
	var idBuf [36]byte
	id := events.AppendDerivedID(idBuf[:0], en.Cause, en.LedgerAccount)
	dst = events.AppendEnvelopeHead(dst, id, Source, events.TypeLedgerEntry, en.At, en.AccountID)
	dst = events.AppendLedgerEntryFields(dst, id, txID, en.AccountID, en.LedgerAccount, en.AmountMicros, en.Kind,
		en.Cause, en.RequestID, en.ProjectID, en.GrantID, en.At)
	return append(dst, '}')
}

// appendBalanceEvent appends the balance.updated event of bu with id, stamped at.
func appendBalanceEvent(dst, id []byte, at time.Time, bu *events.BalanceUpdated) []byte {
	dst = events.AppendEnvelopeHead(dst, id, Source, events.TypeBalanceUpdated, at, bu.AccountID)
	dst = events.AppendBalanceUpdated(dst, bu)
	return append(dst, '}')
}

// encodeEvent encodes a rare output (request.expired, limits.adjusted) with encoding/json,
// validating it.
func encodeEvent(id string, at time.Time, d events.Data) ([]byte, error) {
	ev, err := events.NewWithID(id, Source, at, d)
	if err != nil {
		return nil, fmt.Errorf("ledger: output %s: %w", d.EventType(), err)
	}
	return ev.Encode()
}

// State records: a kind byte, the partition, then the payload.
const (
	recAccount  byte = 'A'
	recSnapshot byte = 'P'
)

func encodeAccountRecord(dst []byte, partition int32, a *fold.Account) []byte {
	dst = append(dst, recAccount)
	dst = binary.AppendUvarint(dst, uint64(partition))
	return a.AppendBinary(dst)
}

func encodeSnapshotRecord(s fold.Snapshot) []byte {
	dst := []byte{recSnapshot}
	dst = binary.AppendUvarint(dst, uint64(s.Partition))
	dst = binary.AppendVarint(dst, s.WatermarkNs)
	return binary.AppendVarint(dst, s.Offset)
}

// decodeRecord decodes a state record: exactly one of account and snapshot is set.
func decodeRecord(b []byte) (partition int32, a *fold.Account, s *fold.Snapshot, err error) {
	if len(b) < 2 {
		return 0, nil, nil, fold.ErrCorrupt
	}
	p, n := binary.Uvarint(b[1:])
	if n <= 0 || p > 1<<31-1 {
		return 0, nil, nil, fold.ErrCorrupt
	}
	rest := b[1+n:]
	switch b[0] {
	case recAccount:
		a, err = fold.DecodeAccount(rest)
		return int32(p), a, nil, err
	case recSnapshot:
		wm, n1 := binary.Varint(rest)
		if n1 <= 0 {
			return 0, nil, nil, fold.ErrCorrupt
		}
		off, n2 := binary.Varint(rest[n1:])
		if n2 <= 0 || n1+n2 != len(rest) {
			return 0, nil, nil, fold.ErrCorrupt
		}
		return int32(p), nil, &fold.Snapshot{Partition: int32(p), WatermarkNs: wm, Offset: off}, nil
	}
	return 0, nil, nil, fmt.Errorf("%w: record kind %q", fold.ErrCorrupt, b[0])
}

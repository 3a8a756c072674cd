package engine

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/tallyhq/tally/services/ledger/fold"
	"github.com/tallyhq/tally/shared/events"
)

// The hot outputs (ledger.entry, balance.updated) are encoded by hand: encoding/json over
// the envelope and its json.RawMessage data was the largest cost of the ledger end to end.
// encode_test.go checks that the bytes equal json.Marshal's, and every consumer decodes
// them with events.Decode (strict).

// appendEnvelope appends a structured-mode CloudEvent with already-encoded data.
func appendEnvelope(dst []byte, id, typ string, at time.Time, subject string, data []byte) []byte {
	dst = appendEnvelopeHead(dst, id, typ, at, subject)
	dst = append(dst, data...)
	return append(dst, '}')
}

// appendEnvelopeHead appends a structured-mode CloudEvent up to its "data": the caller
// appends the data and the closing brace, so the data needs no buffer of its own.
func appendEnvelopeHead[T ~string | ~[]byte](dst []byte, id T, typ string, at time.Time, subject string) []byte {
	dst = append(dst, `{"specversion":"1.0","id":`...)
	dst = appendString(dst, id)
	dst = append(dst, `,"source":`...)
	dst = appendString(dst, Source)
	dst = append(dst, `,"type":`...)
	dst = appendString(dst, typ)
	dst = append(dst, `,"time":`...)
	dst = appendTime(dst, at)
	dst = append(dst, `,"subject":`...)
	dst = appendString(dst, subject)
	return append(dst, `,"datacontenttype":"application/json","data":`...)
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendString appends s as a JSON string exactly as encoding/json does; strings that need
// escaping (rare: ids are validated) go through encoding/json itself.
func appendString[T ~string | ~[]byte](dst []byte, s T) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(string(s))
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendKeyString[T ~string | ~[]byte](dst []byte, key string, v T) []byte {
	dst = append(dst, key...)
	return appendString(dst, v)
}

func appendKeyInt(dst []byte, key string, v int64) []byte {
	dst = append(dst, key...)
	return strconv.AppendInt(dst, v, 10)
}

// appendLedgerEntry appends the JSON of le (the field order and omitempty of the Go type).
func appendLedgerEntry(dst []byte, le *events.LedgerEntry) []byte {
	return appendEntryData(dst, le.EntryID, le.TransactionID, &fold.Entry{Cause: le.CauseEventID, AccountID: le.AccountID,
		LedgerAccount: le.LedgerAccount, AmountMicros: le.AmountMicros, Kind: le.Kind, RequestID: le.RequestID, GrantID: le.GrantID, At: le.EffectiveAt})
}

// appendEntryEvent appends the ledger.entry event of en in transaction txID: the bytes of
// appendEnvelope(appendLedgerEntry(en.EventInTx(txID))), without building the event's
// strings (the entry id is derived into a stack buffer).
func appendEntryEvent(dst []byte, en *fold.Entry, txID []byte) []byte {
	var idBuf [36]byte
	id := events.AppendDerivedID(idBuf[:0], en.Cause, en.LedgerAccount)
	dst = appendEnvelopeHead(dst, id, events.TypeLedgerEntry, en.At, en.AccountID)
	dst = appendEntryData(dst, id, txID, en)
	return append(dst, '}')
}

// appendEntryData appends the JSON data of a ledger.entry: the field order and omitempty
// of events.LedgerEntry.
func appendEntryData[T ~string | ~[]byte](dst []byte, entryID, txID T, en *fold.Entry) []byte {
	dst = appendKeyString(dst, `{"entry_id":`, entryID)
	dst = appendKeyString(dst, `,"transaction_id":`, txID)
	dst = appendKeyString(dst, `,"account_id":`, en.AccountID)
	dst = appendKeyString(dst, `,"ledger_account":`, en.LedgerAccount)
	dst = appendKeyInt(dst, `,"amount_micros":`, en.AmountMicros)
	dst = appendKeyString(dst, `,"kind":`, en.Kind)
	dst = appendKeyString(dst, `,"cause_event_id":`, en.Cause)
	if en.RequestID != "" {
		dst = appendKeyString(dst, `,"request_id":`, en.RequestID)
	}
	if en.GrantID != "" {
		dst = appendKeyString(dst, `,"grant_id":`, en.GrantID)
	}
	dst = append(dst, `,"effective_at":`...)
	dst = appendTime(dst, en.At)
	return append(dst, '}')
}

// appendBalanceEvent appends the balance.updated event of bu with id, stamped at.
func appendBalanceEvent(dst, id []byte, at time.Time, bu *events.BalanceUpdated) []byte {
	dst = appendEnvelopeHead(dst, id, events.TypeBalanceUpdated, at, bu.AccountID)
	dst = appendBalance(dst, bu)
	return append(dst, '}')
}

// appendBalance appends the JSON of bu.
func appendBalance(dst []byte, bu *events.BalanceUpdated) []byte {
	dst = appendKeyString(dst, `{"account_id":`, bu.AccountID)
	dst = appendKeyString(dst, `,"tier":`, bu.Tier)
	dst = appendKeyString(dst, `,"priority":`, bu.Priority)
	dst = append(dst, `,"suspended":`...)
	dst = strconv.AppendBool(dst, bu.Suspended)
	dst = appendKeyInt(dst, `,"available_micros":`, bu.AvailableMicros)
	dst = appendKeyInt(dst, `,"held_micros":`, bu.HeldMicros)
	dst = appendKeyInt(dst, `,"overage_micros":`, bu.OverageMicros)
	if len(bu.Allowance) > 0 {
		dst = append(dst, `,"allowance":[`...)
		for i, w := range bu.Allowance {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendKeyString(dst, `{"window":`, w.Window)
			dst = append(dst, `,"start":`...)
			dst = appendTime(dst, w.Start)
			dst = appendKeyInt(dst, `,"used_micros":`, w.UsedMicros)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if len(bu.Expiring) > 0 {
		dst = append(dst, `,"expiring":[`...)
		for i, x := range bu.Expiring {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"expires_at":`...)
			dst = appendTime(dst, x.ExpiresAt)
			dst = appendKeyInt(dst, `,"remaining_micros":`, x.RemainingMicros)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	dst = appendKeyInt(dst, `,"partition":`, int64(bu.Partition))
	dst = appendKeyInt(dst, `,"offset":`, bu.Offset)
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

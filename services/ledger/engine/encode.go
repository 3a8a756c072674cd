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
	dst = append(dst, `,"datacontenttype":"application/json","data":`...)
	dst = append(dst, data...)
	return append(dst, '}')
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendString appends s as a JSON string exactly as encoding/json does; strings that need
// escaping (rare: ids are validated) go through encoding/json itself.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

func appendKeyString(dst []byte, key, v string) []byte {
	dst = append(dst, key...)
	return appendString(dst, v)
}

func appendKeyInt(dst []byte, key string, v int64) []byte {
	dst = append(dst, key...)
	return strconv.AppendInt(dst, v, 10)
}

// appendLedgerEntry appends the JSON of le (the field order and omitempty of the Go type).
func appendLedgerEntry(dst []byte, le *events.LedgerEntry) []byte {
	dst = appendKeyString(dst, `{"entry_id":`, le.EntryID)
	dst = appendKeyString(dst, `,"transaction_id":`, le.TransactionID)
	dst = appendKeyString(dst, `,"account_id":`, le.AccountID)
	dst = appendKeyString(dst, `,"ledger_account":`, le.LedgerAccount)
	dst = appendKeyInt(dst, `,"amount_micros":`, le.AmountMicros)
	dst = appendKeyString(dst, `,"kind":`, le.Kind)
	dst = appendKeyString(dst, `,"cause_event_id":`, le.CauseEventID)
	if le.RequestID != "" {
		dst = appendKeyString(dst, `,"request_id":`, le.RequestID)
	}
	if le.GrantID != "" {
		dst = appendKeyString(dst, `,"grant_id":`, le.GrantID)
	}
	dst = append(dst, `,"effective_at":`...)
	dst = appendTime(dst, le.EffectiveAt)
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

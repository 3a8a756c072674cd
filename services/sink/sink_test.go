package sink_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/caarlos0/env/v11"

	"github.com/tallyhq/tally/services/sink"
)

func TestConfigDefaultsMatchEnvDefaults(t *testing.T) {
	got, err := env.ParseAsWithOptions[sink.Config](env.Options{Environment: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	if want := sink.DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Fatalf("env defaults %+v\ndiffer from DefaultConfig %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestConfigValidateNamesEveryBadVariable(t *testing.T) {
	c, err := env.ParseAsWithOptions[sink.Config](env.Options{Environment: map[string]string{
		"KAFKA_BROKERS": "nope", "SINK_BATCH_ROWS_MAX": "0", "SINK_BATCH_WAIT_MS": "0", "CLICKHOUSE_PROTOCOL": "grpc",
		"SINK_RETRY_BACKOFF_MIN_MS": "10", "SINK_RETRY_BACKOFF_MAX_MS": "5", "SINK_DETECT_BURST_FACTOR": "0.5",
		"SINK_RETENTION_DAYS": "0", "CLICKHOUSE_ADDR": "localhost", "SINK_DEDUPE_WINDOW_MESSAGES": "-1",
	}})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("bad settings accepted")
	}
	for _, name := range []string{"KAFKA_BROKERS", "SINK_BATCH_ROWS_MAX", "SINK_BATCH_WAIT_MS", "CLICKHOUSE_PROTOCOL",
		"SINK_RETRY_BACKOFF_MAX_MS", "SINK_DETECT_BURST_FACTOR", "SINK_RETENTION_DAYS", "CLICKHOUSE_ADDR",
		"SINK_DEDUPE_WINDOW_MESSAGES"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if _, err := sink.New(c, nil); err == nil {
		t.Fatal("New accepted bad settings")
	}
}

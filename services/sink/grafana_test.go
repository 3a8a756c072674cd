package sink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/sink/chstore"
	"github.com/tallyhq/tally/services/sink/internal/chtest"
	"github.com/tallyhq/tally/services/sink/internal/testevents"
	"github.com/tallyhq/tally/shared/events"
)

// expandMacros does what grafana-clickhouse-datasource does with its macros, for a fixed range.
func expandMacros(sql string, from, to time.Time) string {
	f, t := fmt.Sprintf("toDateTime(%d)", from.Unix()), fmt.Sprintf("toDateTime(%d)", to.Unix())
	sql = regexp.MustCompile(`\$__timeFilter\(([a-z_]+)\)`).ReplaceAllString(sql, "$1 >= "+f+" AND $1 <= "+t)
	sql = regexp.MustCompile(`\$__timeInterval\(([a-z_]+)\)`).ReplaceAllString(sql, "toStartOfInterval(toDateTime($1), INTERVAL 60 second)")
	return strings.NewReplacer("$__fromTime", f, "$__toTime", t, "${account:raw}", "%").Replace(sql)
}

func TestGrafanaPanelsRunOnTheEngine(t *testing.T) {
	raw, err := os.ReadFile("../../deployments/grafana/dashboards/tally.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct {
				RawSQL     string `json:"rawSql"`
				Datasource struct{ UID string }
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	_, conn := chtest.Open(t)
	s := &testevents.Seeder{TB: t, Store: chstore.NewStore(conn, time.Minute), Topic: "seed"}
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Minute)
	for i := 0; i < 20; i++ {
		s.Request(fmt.Sprintf("acct-%d", i%3), fmt.Sprintf("r%d", i), "video", "pro", events.FundingCredits, at.Add(time.Duration(i)*time.Second), 1000, 100, "1.1.1.1")
	}
	s.Reject("acct-1", "x1", "video", "rate_limited", at, "1.1.1.1")
	s.Add(events.AbuseFlagged{FlagID: "f1", AccountID: "acct-1", Rule: "burst", Score: 7, Action: "throttle", WindowStart: at, WindowEnd: at.Add(5 * time.Minute)}, at.Add(5*time.Minute))
	s.Flush()
	if len(dash.Panels) < 6 {
		t.Fatalf("%d panels", len(dash.Panels))
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			if tg.Datasource.UID != "tally-clickhouse" {
				t.Errorf("%s: data source %q", p.Title, tg.Datasource.UID)
			}
			q := expandMacros(tg.RawSQL, at.Add(-time.Hour), time.Now().UTC().Add(time.Hour))
			rs, err := conn.Query(context.Background(), q)
			if err != nil {
				t.Errorf("%s: %v\n%s", p.Title, err, q)
				continue
			}
			n := 0
			for rs.Next() {
				n++
			}
			rs.Close()
			if n == 0 {
				t.Errorf("%s: no rows over seeded data", p.Title)
			}
		}
	}
}

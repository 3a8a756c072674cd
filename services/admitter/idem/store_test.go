package idem

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/shared/events"
)

// TestStoreModel checks the open-addressing index (growth, backward-shift deletion, slot
// reuse) against a Go map over random adds and removes, and that every record keeps its own
// strings.
func TestStoreModel(t *testing.T) {
	st := New(10)
	model := map[string]uint32{}
	rng := rand.New(rand.NewPCG(1, 2))
	var ids []string
	for step := 0; step < 60_000; step++ {
		if len(ids) > 0 && rng.IntN(3) == 0 { // remove a random present id
			k := rng.IntN(len(ids))
			id := ids[k]
			ids[k] = ids[len(ids)-1]
			ids = ids[:len(ids)-1]
			ri, ok := st.Lookup(id)
			if !ok || ri != model[id] {
				t.Fatalf("step %d: %q at %d, %v; want %d", step, id, ri, ok, model[id])
			}
			st.Forget(ri)
			delete(model, id)
			continue
		}
		id := fmt.Sprintf("r-%d", rng.IntN(40_000))
		ri, slot, ok := st.Find(id)
		if want, in := model[id]; ok != in || ok && ri != want {
			t.Fatalf("step %d: find %q = %d, %v; model %d, %v", step, id, ri, ok, want, in)
		}
		if ok {
			continue
		}
		req := api.AdmitRequest{RequestID: id, AccountID: "acct-" + id, Endpoint: "e", Estimate: events.Units{TokensIn: int64(step)}}
		model[id] = st.Add(slot, &req, "", "k", "127.0.0.1", []byte(`{"answer":"`+id+`"}`))
		ids = append(ids, id)
	}
	if st.n != len(model) {
		t.Fatalf("store holds %d, model %d", st.n, len(model))
	}
	for id, ri := range model {
		if got, ok := st.Lookup(id); !ok || got != ri {
			t.Fatalf("%q: %d, %v; want %d", id, got, ok, ri)
		}
		if a, b := st.str(ri, segAccount), st.str(ri, segBody); a != "acct-"+id || b != `{"answer":"`+id+`"}` {
			t.Fatalf("%q: account %q, answer %q", id, a, b)
		}
		if !st.SameAdmit(ri, &api.AdmitRequest{RequestID: id, AccountID: "acct-" + id, Endpoint: "e",
			Estimate: events.Units{TokensIn: st.recs[ri].est[1]}}) {
			t.Fatalf("%q: parameters not kept", id)
		}
	}
	if _, ok := st.Lookup("r-never"); ok {
		t.Fatal("found an id never added")
	}
}

func TestAppendDoubling(t *testing.T) {
	var s []int
	grows := 0
	for i := 0; i < 300_000; i++ {
		c := cap(s)
		s = appendDoubling(s, i)
		if cap(s) != c {
			grows++
			if c > 0 && cap(s) != 2*c {
				t.Fatalf("grew from %d to %d, want %d", c, cap(s), 2*c)
			}
		}
	}
	for i, v := range s {
		if v != i {
			t.Fatalf("s[%d] = %d", i, v)
		}
	}
	if grows != 10 { // 1024 << 9 = 524,288 >= 300,000
		t.Fatalf("%d reallocations for 300,000 appends, want 10", grows)
	}
}

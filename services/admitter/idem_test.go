package admitter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/services/admitter/api"
	"github.com/tallyhq/tally/shared/events"
)

// gatedPublisher blocks every Publish until release, then answers with err (or success).
type gatedPublisher struct {
	mu      sync.Mutex
	calls   int
	started chan struct{}
	release chan error
	next    int64
}

func (p *gatedPublisher) Publish(ctx context.Context, _ string, _ []byte) (int32, int64, error) {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	p.started <- struct{}{}
	select {
	case err := <-p.release:
		if err != nil {
			return 0, 0, err
		}
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	return 0, p.next, nil
}

func (p *gatedPublisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// idemService is a ready service (never Run: no Kafka) with a funded account, answering
// through pub, keeping at most max answered ids.
func idemService(t *testing.T, max int, pub Publisher) (*Service, http.Handler) {
	t.Helper()
	s, h := readyService(t, pub, func(c *Config) { c.IdempotencyMax = max })
	b := bal("ent", "enterprise", 1e12)
	s.table.ApplyBalance(&b)
	return s, h
}

func answerOf(h http.Handler, path string, body any) string {
	raw, _ := json.Marshal(body)
	rec := hostilePost(h, path, "application/json", string(raw))
	return fmt.Sprintf("%d %s %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
}

// TestIdempotencyBound: the cache keeps every open request however many ids were answered
// since, and the last IdempotencyMax answered ids; an id that left it is decided afresh.
func TestIdempotencyBound(t *testing.T) {
	pub := &recordingPublisher{}
	s, h := idemService(t, 2, pub)
	open := answerOf(h, api.PathAdmit, codeReq("open-1", "ent"))
	if open[:3] != "200" {
		t.Fatalf("open-1: %s", open)
	}
	finish := func(id string) string {
		return answerOf(h, api.PathFinish, api.FinishRequest{RequestID: id, Status: "succeeded", Usage: events.Units{TokensIn: 10}})
	}
	admits, finishes := map[string]string{}, map[string]string{}
	for i := 1; i <= 3; i++ { // f-1 leaves the cache when f-3 is answered
		id := fmt.Sprintf("f-%d", i)
		admits[id] = answerOf(h, api.PathAdmit, codeReq(id, "ent"))
		finishes[id] = finish(id)
		if admits[id][:3] != "200" || finishes[id][:3] != "200" {
			t.Fatalf("%s: %s / %s", id, admits[id], finishes[id])
		}
	}
	pub.take()
	// Repeats publish nothing and are byte-identical, for the open request too.
	if a := answerOf(h, api.PathAdmit, codeReq("open-1", "ent")); a != open {
		t.Fatalf("open-1 repeat:\n%s\n%s", a, open)
	}
	for _, id := range []string{"f-2", "f-3"} {
		if a, f := answerOf(h, api.PathAdmit, codeReq(id, "ent")), finish(id); a != admits[id] || f != finishes[id] {
			t.Fatalf("%s repeat:\n%s\n%s\n%s\n%s", id, a, admits[id], f, finishes[id])
		}
	}
	if n := len(pub.take()); n != 0 {
		t.Fatalf("repeats published %d events", n)
	}
	other := codeReq("open-1", "ent")
	other.Model = "codex-mini"
	if a := answerOf(h, api.PathAdmit, other); a[:3] != "409" {
		t.Fatalf("open-1 with other parameters: %s", a)
	}
	if f := answerOf(h, api.PathFinish, api.FinishRequest{RequestID: "f-3", Status: "failed"}); f[:3] != "409" {
		t.Fatalf("f-3 finished again with other usage: %s", f)
	}
	// f-1 left the cache: its admit is decided again (one new event), and finishing it works.
	if a := answerOf(h, api.PathAdmit, codeReq("f-1", "ent")); a[:3] != "200" {
		t.Fatalf("f-1 again: %s", a)
	}
	if n := len(pub.take()); n != 1 {
		t.Fatalf("f-1 again published %d events, want 1", n)
	}
	// The open request survived all that and finishes once.
	f1 := finish("open-1")
	if f1[:3] != "200" || finish("open-1") != f1 {
		t.Fatalf("open-1 finish: %s", f1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Finishing open-1 pushed f-2 out: the 2 answered ids kept are f-3 and open-1, beside the
	// open f-1.
	for id, want := range map[string]bool{"open-1": true, "f-1": true, "f-2": false, "f-3": true} {
		if _, ok := s.idem.Lookup(id); ok != want {
			t.Errorf("%s cached: %v, want %v", id, ok, want)
		}
	}
	if got := s.idem.Len(); got != 3 {
		t.Fatalf("cache holds %d records, want 3", got)
	}
}

// TestIdempotencyWaiters: repeats of an admit (and of a finish) whose event is still being
// published wait for it; when it fails they answer 503 and publish nothing, and a retry then
// decides afresh.
func TestIdempotencyWaiters(t *testing.T) {
	pub := &gatedPublisher{started: make(chan struct{}, 16), release: make(chan error, 16)}
	_, h := idemService(t, 100, pub)
	// Admit whose event fails, with 3 repeats waiting on it.
	first := make(chan string, 1)
	go func() { first <- answerOf(h, api.PathAdmit, codeReq("w-1", "ent")) }()
	<-pub.started
	repeats := make(chan string, 3)
	for range 3 {
		go func() { repeats <- answerOf(h, api.PathAdmit, codeReq("w-1", "ent")) }()
	}
	time.Sleep(100 * time.Millisecond) // let the repeats find the pending record and wait
	pub.release <- errors.New("broker down")
	if a := <-first; a[:3] != "503" {
		t.Fatalf("first: %s", a)
	}
	for range 3 {
		if a := <-repeats; a[:3] != "503" {
			t.Fatalf("repeat of a failed admit: %s", a)
		}
	}
	if n := pub.count(); n != 1 {
		t.Fatalf("%d publishes, want 1", n)
	}
	// The retry decides afresh; a repeat waiting on it gets the identical answer.
	go func() { first <- answerOf(h, api.PathAdmit, codeReq("w-1", "ent")) }()
	<-pub.started
	go func() { repeats <- answerOf(h, api.PathAdmit, codeReq("w-1", "ent")) }()
	time.Sleep(100 * time.Millisecond)
	pub.release <- nil
	a1, a2 := <-first, <-repeats
	if a1[:3] != "200" || a1 != a2 {
		t.Fatalf("retry and its repeat:\n%s\n%s", a1, a2)
	}
	// A finish whose event fails, with a repeat waiting: both 503; then a retry succeeds and
	// its repeat replays it.
	fin := api.FinishRequest{RequestID: "w-1", Status: "succeeded", Usage: events.Units{TokensIn: 7}}
	go func() { first <- answerOf(h, api.PathFinish, fin) }()
	<-pub.started
	go func() { repeats <- answerOf(h, api.PathFinish, fin) }()
	time.Sleep(100 * time.Millisecond)
	pub.release <- errors.New("broker down")
	if f1, f2 := <-first, <-repeats; f1[:3] != "503" || f2[:3] != "503" {
		t.Fatalf("failed finish and its repeat: %s / %s", f1, f2)
	}
	go func() { first <- answerOf(h, api.PathFinish, fin) }()
	<-pub.started
	go func() { repeats <- answerOf(h, api.PathFinish, fin) }()
	time.Sleep(100 * time.Millisecond)
	pub.release <- nil
	if f1, f2 := <-first, <-repeats; f1[:3] != "200" || f1 != f2 {
		t.Fatalf("finish and its repeat:\n%s\n%s", f1, f2)
	}
	if n := pub.count(); n != 4 {
		t.Fatalf("%d publishes, want 4", n)
	}
}

// TestIdempotencyExpiry: a request whose hold expired locally stays cached as answered (its
// admit replays byte for byte, its finish answers 404 unknown_request), and it is then in the
// FIFO like any answered id.
func TestIdempotencyExpiry(t *testing.T) {
	pub := &recordingPublisher{}
	s, h := idemService(t, 1, pub)
	admit := answerOf(h, api.PathAdmit, codeReq("x-1", "ent"))
	if admit[:3] != "200" {
		t.Fatalf("x-1: %s", admit)
	}
	s.expire(time.Now().Add(30 * 24 * time.Hour))
	s.mu.Lock()
	open := s.table.OpenRequests()
	s.mu.Unlock()
	if open != 0 {
		t.Fatalf("%d open requests after the expiry", open)
	}
	fin := api.FinishRequest{RequestID: "x-1", Status: "succeeded", Usage: events.Units{TokensIn: 10}}
	if f := answerOf(h, api.PathFinish, fin); !strings.HasPrefix(f, "404") || !strings.Contains(f, api.CodeUnknownRequest) {
		t.Fatalf("finish after expiry: %s", f)
	}
	pub.take()
	if a := answerOf(h, api.PathAdmit, codeReq("x-1", "ent")); a != admit {
		t.Fatalf("repeat after expiry:\n%s\n%s", a, admit)
	}
	if n := len(pub.take()); n != 0 {
		t.Fatalf("repeat after expiry published %d events", n)
	}
	// The bound is 1: answering y-1 pushes the expired x-1 out of the cache.
	if a := answerOf(h, api.PathAdmit, codeReq("y-1", "ent")); a[:3] != "200" {
		t.Fatalf("y-1: %s", a)
	}
	if f := answerOf(h, api.PathFinish, api.FinishRequest{RequestID: "y-1", Status: "succeeded"}); f[:3] != "200" {
		t.Fatalf("y-1 finish: %s", f)
	}
	s.mu.Lock()
	_, cached := s.idem.Lookup("x-1")
	s.mu.Unlock()
	if cached {
		t.Fatal("x-1 still cached past the bound")
	}
}

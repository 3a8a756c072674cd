package settings

import (
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// composeFile is the part of docker-compose.yml this test reads.
type composeFile struct {
	Services map[string]struct {
		Build *struct {
			Args map[string]string `yaml:"args"`
		} `yaml:"build"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
	} `yaml:"services"`
}

// TestComposeMatchesServiceSettings holds docker-compose.yml to the services' real settings:
// every variable compose sets on a Tally service is one that service reads (a misspelt or
// renamed one is silently ignored, and the service runs on its default), its listen address
// is set and is not a loopback address (the default 127.0.0.1 is unreachable from outside
// the container), and the port compose publishes is the one the service listens on.
func TestComposeMatchesServiceSettings(t *testing.T) {
	b, err := os.ReadFile("../../../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(b, &cf); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	checkCompose(t, cf)
}

// reporter is the part of *testing.T the check uses.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder collects what the check reports.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func checkCompose(t reporter, cf composeFile) {
	t.Helper()
	seen := map[string]bool{}
	for name, svc := range cf.Services {
		if svc.Build == nil || svc.Build.Args["SERVICE"] == "" {
			continue // not built from deployments/Dockerfile: not a Tally service
		}
		service := svc.Build.Args["SERVICE"]
		seen[service] = true
		reads := map[string]string{} // variable -> default
		for _, s := range Of(service) {
			reads[s.Name] = s.Default
		}
		if len(reads) == 0 {
			t.Errorf("compose service %s builds SERVICE=%s, which has no settings", name, service)
			continue
		}
		var unread []string
		for v := range svc.Environment {
			if _, ok := reads[v]; !ok {
				unread = append(unread, v)
			}
		}
		sort.Strings(unread)
		if len(unread) > 0 {
			t.Errorf("compose service %s sets %s, which %s does not read", name, strings.Join(unread, ", "), service)
		}
		listenVar := strings.ToUpper(service) + "_LISTEN_ADDR"
		if _, ok := reads[listenVar]; !ok {
			t.Errorf("%s has no %s setting", service, listenVar)
			continue
		}
		addr, set := svc.Environment[listenVar]
		if !set {
			addr = reads[listenVar]
			t.Errorf("compose service %s does not set %s: it would listen on its default %s", name, listenVar, addr)
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("compose service %s: %s=%q: %v", name, listenVar, addr, err)
			continue
		}
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			t.Errorf("compose service %s: %s=%s is a loopback address, unreachable from outside its container", name, listenVar, addr)
		}
		published := false
		for _, p := range svc.Ports {
			parts := strings.Split(p, ":")
			if parts[len(parts)-1] == port {
				published = true
			}
		}
		if !published {
			t.Errorf("compose service %s listens on port %s but publishes %v", name, port, svc.Ports)
		}
	}
	for _, s := range Services() {
		if !seen[s] {
			t.Errorf("docker-compose.yml runs no %s", s)
		}
	}
}

// The check itself finds what it must: an unread variable, a loopback or missing listen
// address, a port published other than the one listened on.
func TestComposeCheckCatchesMistakes(t *testing.T) {
	const bad = `
services:
  ledger:
    build: { args: { SERVICE: ledger } }
    environment: { LEDGER_ADDR: "0.0.0.0:8082" }
    ports: ["8082:8082"]
  admitter:
    build: { args: { SERVICE: admitter } }
    environment: { ADMITTER_LISTEN_ADDR: "127.0.0.1:8081" }
    ports: ["8081:8081"]
  sink:
    build: { args: { SERVICE: sink } }
    environment: { SINK_LISTEN_ADDR: "0.0.0.0:8083" }
    ports: ["8084:8084"]
`
	var cf composeFile
	if err := yaml.Unmarshal([]byte(bad), &cf); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	checkCompose(rec, cf)
	for _, want := range []string{"sets LEDGER_ADDR, which ledger does not read", "does not set LEDGER_LISTEN_ADDR",
		"ADMITTER_LISTEN_ADDR=127.0.0.1:8081 is a loopback address", "listens on port 8083 but publishes [8084:8084]"} {
		if !strings.Contains(strings.Join(rec.errs, "\n"), want) {
			t.Errorf("the check missed %q; it said:\n%s", want, strings.Join(rec.errs, "\n"))
		}
	}
}

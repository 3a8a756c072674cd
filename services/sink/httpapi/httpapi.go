// Package httpapi serves the sink's operational endpoints: /metrics (Prometheus), /healthz
// (the process answers) and /readyz (schema applied, consumer running, last flush good).
package httpapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tallyhq/tally/shared/httpx"
)

// Handler returns the mux. ready returns nil when the sink is ready, else why not.
func Handler(reg *prometheus.Registry, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			httpx.WriteError(w, httpx.Errorf(http.StatusServiceUnavailable, httpx.CodeUnavailable, "%s", err.Error()))
			return
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
			if r.URL.Path == p {
				w.Header().Set("Allow", "GET")
				httpx.WriteError(w, httpx.Errorf(http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "%s allows GET only", p))
				return
			}
		}
		httpx.NotFound(w, r)
	})
	return httpx.Recover(mux, nil)
}

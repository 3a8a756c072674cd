# Tally's build. Every target is idempotent. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

MODULES     := shared services/admitter services/ledger services/sink services/tallyctl
BIN         := $(CURDIR)/bin
TEST_FLAGS  ?= -count=1 -timeout 20m
FUZZ_TIME   ?= 10s
BENCH_FLAGS ?= -run '^$$' -bench . -benchmem -count 5 -timeout 60m
# make run's data directory: the Kafka log, ClickHouse data, keys (keys.env, 0600), run.json.
TALLY_DATA_DIR ?= $(CURDIR)/.tally
# make run's own Kafka broker (not 9092, which make kafka-up and CI use).
TALLY_KAFKA_PORT ?= 19092
TALLY_KAFKA_CONTROLLER_PORT ?= 19093
RUN_KAFKA = KAFKA_HOME=$(TALLY_DATA_DIR)/kafka KAFKA_PORT=$(TALLY_KAFKA_PORT) \
  KAFKA_CONTROLLER_PORT=$(TALLY_KAFKA_CONTROLLER_PORT) $(CURDIR)/deployments/kafka.sh
# libchdb.so (the embedded ClickHouse engine) lives in a cache outside the clone.
CHDB_LIB_PATH ?= $(shell $(CURDIR)/deployments/chdb.sh 2>/dev/null)
export CHDB_LIB_PATH

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: build
build: ## build every module's commands into bin/
	@mkdir -p $(BIN)
	@for m in $(MODULES); do (cd $$m && go build ./... && \
	  if [ -d cmd ]; then go build -o $(BIN)/ ./cmd/...; fi); done

.PHONY: chdb
chdb: ## fetch libchdb.so into the cache (once; checksummed)
	@$(CURDIR)/deployments/chdb.sh

.PHONY: kafka-up kafka-down
kafka-up: ## start a real single-node Apache Kafka on 127.0.0.1:9092 (installs once)
	@$(CURDIR)/deployments/kafka.sh start
kafka-down: ## stop it
	@$(CURDIR)/deployments/kafka.sh stop

.PHONY: run run-ephemeral run-wipe
run: build chdb ## run the whole pipeline on one machine, its data kept in TALLY_DATA_DIR (real Kafka + embedded ClickHouse)
	@mkdir -p $(TALLY_DATA_DIR) && chmod 700 $(TALLY_DATA_DIR)
	@$(RUN_KAFKA) start
	@rc=0; TALLY_DATA_DIR=$(TALLY_DATA_DIR) $(BIN)/tallyctl run -kafka-brokers 127.0.0.1:$(TALLY_KAFKA_PORT) || rc=$$?; \
	  $(RUN_KAFKA) stop; exit $$rc
run-ephemeral: build chdb ## the same in memory (embedded kfake broker, temporary ClickHouse): nothing survives a stop
	TALLY_DATA_DIR=$(TALLY_DATA_DIR) $(BIN)/tallyctl run -ephemeral
run-wipe: ## delete make run's data (Kafka log, ClickHouse data, keys)
	@$(RUN_KAFKA) stop
	rm -rf $(TALLY_DATA_DIR)

.PHONY: image-steps
image-steps: ## run the Dockerfile's build stage without Docker, in a clean directory, for every service
	@$(CURDIR)/deployments/image-steps.sh

.PHONY: up down
up: ## run the production shape with Docker: real Kafka, ClickHouse server, the three services
	docker compose up --build
down:
	docker compose down

.PHONY: fmt-check
fmt-check: ## fail on files gofmt would change
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet: ## go vet every module
	@for m in $(MODULES); do (cd $$m && go vet ./...); done

.PHONY: gowork-off
gowork-off: ## every module builds, vets and compiles its tests on its own (GOWORK=off)
	@for m in $(MODULES); do (cd $$m && GOWORK=off go build ./... && GOWORK=off go vet ./... && \
	  GOWORK=off go test -count=1 -run '^$$' ./... >/dev/null) || { echo "GOWORK=off failed in $$m"; exit 1; }; done

.PHONY: generate
generate: ## write the event payload schemas (schemas/events/*.v1.json) and the hot types' codec (shared/events/codec_gen.go) from the Go types in shared/events
	cd shared/events && go generate ./...

.PHONY: generate-check
generate-check: ## fail when a committed payload schema or codec_gen.go differs from what make generate writes
	@(cd shared && go test -count=1 -run '^(TestSchemasAreGenerated|TestCodecIsGenerated)$$' ./events/ >/dev/null) || \
	  { echo "schemas/events or shared/events/codec_gen.go differ from the Go types: run make generate"; (cd shared && go test -count=1 -run '^(TestSchemasAreGenerated|TestCodecIsGenerated)$$' ./events/) || true; exit 1; }

.PHONY: check
check: fmt-check vet gowork-off generate-check ## static checks

.PHONY: test
test: chdb ## run every module's tests (kfake by default; real Kafka when KAFKA_BROKERS is set)
	@test -n "$(CHDB_LIB_PATH)" || { echo "libchdb.so missing: make chdb"; exit 1; }
	@failed=""; for m in $(MODULES); do echo "== $$m"; \
	  (cd $$m && go test $(TEST_FLAGS) ./...) || failed="$$failed $$m"; done; \
	  if [ -n "$$failed" ]; then echo "make test: FAILED in:$$failed"; exit 1; fi; echo "make test: every module passed"

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZ_TIME (default 10s) each
	@fail=0; for m in $(MODULES); do \
	  for pkg in $$(cd $$m && go list ./...); do \
	    for f in $$(cd $$m && go test -list 'Fuzz.*' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	      for try in 1 2; do \
	        echo "== fuzz $$pkg $$f"; \
	        rc=0; out=$$(cd $$m && go test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZ_TIME) -fuzzminimizetime 500x -parallel 2 $$pkg 2>&1) || rc=$$?; \
	        echo "$$out"; \
	        if [ $$rc -eq 0 ]; then break; fi; \
	        if [ $$try -eq 1 ] && echo "$$out" | grep -q 'context deadline exceeded' && ! echo "$$out" | grep -q 'Failing input written'; then \
	          echo "== $$f: the fuzz coordinator's end-of-fuzztime race (golang/go#75804, fixed in Go 1.27), no input found: running it once more"; continue; \
	        fi; \
	        fail=1; break; \
	      done; \
	    done; done; done; exit $$fail

.PHONY: chaos
chaos: chdb ## the fault suite: kills, broker restarts, hostile messages (real Kafka when KAFKA_BROKERS is set)
	cd services/tallyctl && go test -tags chaos -count=1 -timeout 30m -v ./chaos/

.PHONY: bench
bench: chdb ## run every benchmark (medians: pipe through benchstat), then the 60 s load run against real Kafka (.out/bench/)
	@mkdir -p .out
	@for m in $(MODULES); do (cd $$m && go test $(BENCH_FLAGS) ./...); done | tee .out/bench.txt
	@brokers="$${KAFKA_BROKERS:-127.0.0.1:9092}"; \
	  if [ "$$brokers" = "127.0.0.1:9092" ]; then $(CURDIR)/deployments/kafka.sh start; fi; \
	  cd services/tallyctl && KAFKA_BROKERS="$$brokers" TALLY_LOAD=1 \
	    go test -tags chaos -run TestLoad -count=1 -timeout 20m -v ./chaos/ | tee $(CURDIR)/.out/bench-load.txt

.PHONY: schemathesis
schemathesis: chdb ## property-test both OpenAPI documents against a running pipeline (schemathesis from PyPI, pinned, installed once)
	deployments/schemathesis.sh

.PHONY: ci
ci: ## what .ci/run runs after starting Kafka
	$(MAKE) check
	$(MAKE) image-steps
	$(MAKE) test
	$(MAKE) fuzz FUZZ_TIME=5s
	$(MAKE) schemathesis

.PHONY: docs
docs: ## regenerate the README's settings table from the services' Config structs
	@table=$$(cd services/tallyctl && go run ./internal/settings/gen) && \
	  python3 -c 'import sys,re; p="README.md"; s=open(p).read(); t=sys.argv[1]; \
	  s=re.sub(r"(<!-- settings:begin -->\n).*?(<!-- settings:end -->)", lambda m: m.group(1)+t+"\n"+m.group(2), s, flags=re.S); open(p,"w").write(s)' "$$table"

.PHONY: clean
clean:
	rm -rf $(BIN) .out

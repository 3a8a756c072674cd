#!/usr/bin/env bash
# deployments/schemathesis.sh: property-test both OpenAPI documents against a running pipeline
# with schemathesis (PyPI). Installs a pinned schemathesis into a virtualenv in the cache once
# (idempotent), starts `tallyctl run` on private ports with known keys, runs a bounded number
# of examples per operation with every check, stops the pipeline. Any failure exits non-zero.
#
# Settings (environment):
#   TALLY_CACHE_DIR            cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tally)
#   SCHEMATHESIS_VERSION       the PyPI version (default below)
#   SCHEMATHESIS_MAX_EXAMPLES  examples per operation and phase (default 50)
#   SCHEMATHESIS_PORT_BASE     first of the 5 ports used (default 18580)
#
# Why two runs per document: schemathesis 4.32's negative-data fuzzer cannot rebuild our id
# pattern (its translation writes astral-plane ranges as Python \U escapes and then refuses
# them as ECMA 262), so negative data comes from the examples and coverage phases (which
# handle the pattern) and the fuzzing and stateful phases draw positive data only.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
MAX=${SCHEMATHESIS_MAX_EXAMPLES:-50}
BASE=${SCHEMATHESIS_PORT_BASE:-18580}
CACHE=${TALLY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tally}
VENV="$CACHE/schemathesis-$SCHEMATHESIS_VERSION"

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  command -v python3 >/dev/null || { echo "schemathesis.sh: python3 is required" >&2; exit 1; }
  python3 -m venv "$VENV" || { echo "schemathesis.sh: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

export CHDB_LIB_PATH=${CHDB_LIB_PATH:-$(deployments/chdb.sh)}
bin=$(mktemp -d)
mkdir -p "$bin/data"
(cd services/tallyctl && go build -o "$bin/tallyctl" ./cmd/tallyctl)
key="tk_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
admin="ta_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
admitter=127.0.0.1:$BASE ledger=127.0.0.1:$((BASE + 1))
TALLY_RUN_API_KEY=$key TALLY_RUN_ADMIN_TOKEN=$admin "$bin/tallyctl" run -ephemeral -data-dir "$bin/data" \
  -kafka-addr 127.0.0.1:$((BASE + 2)) -clickhouse-addr 127.0.0.1:$((BASE + 3)) \
  -admitter-addr "$admitter" -ledger-addr "$ledger" -sink-addr 127.0.0.1:$((BASE + 4)) \
  >"$bin/run.out" 2>"$bin/run.err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$bin"' EXIT
for _ in $(seq 1 120); do
  if curl -sf "http://$admitter/readyz" >/dev/null && curl -sf "http://$ledger/readyz" >/dev/null; then break; fi
  kill -0 $pid 2>/dev/null || { cat "$bin/run.err" >&2; exit 1; }
  sleep 1
done
curl -sf "http://$admitter/readyz" >/dev/null || { echo "schemathesis.sh: pipeline not ready" >&2; cat "$bin/run.err" >&2; exit 1; }

# A grant's expires_at must be in the future, which the schema cannot say (see the hooks).
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$PWD/deployments${PYTHONPATH:+:$PYTHONPATH}"
st() { # doc url token
  "$VENV/bin/schemathesis" run "$1" --url "$2" -H "Authorization: Bearer $3" --checks all \
    --max-examples "$MAX" --seed 1 --no-color --mode all --phases examples,coverage
  "$VENV/bin/schemathesis" run "$1" --url "$2" -H "Authorization: Bearer $3" --checks all \
    --max-examples "$MAX" --seed 1 --no-color --mode positive --phases fuzzing,stateful
}
st services/admitter/api/openapi.json "http://$admitter" "$key"
st services/ledger/openapi.json "http://$ledger" "$admin"
echo "schemathesis.sh: both documents clean ($MAX examples per operation and phase)"

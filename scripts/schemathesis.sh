#!/usr/bin/env bash
# Property-based API tests: runs schemathesis (pinned, from PyPI, in its own venv under
# ${CHRONOS_CACHE:-~/.cache/chronos-test}/schemathesis-venv) against the OpenAPI document that
# a freshly started `chronos serve` serves, with every check on. Any 5xx, undocumented status,
# response that does not match its schema, etc. fails the run.
#
# Builds nothing: it runs the binary at $CHRONOS_BIN (default $CARGO_TARGET_DIR/debug/chronos, or target/…), so
# `cargo build --locked --bin chronos` first. The server runs embedded (SQLite + a directory) in
# a fresh temporary directory, with a tokens file; schemathesis sends that token, so requests get
# past auth into the handlers. `{db}` is pinned to `default` (the only database in embedded mode).
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 50 per operation), SCHEMATHESIS_SEED (default
# fixed, so CI runs are reproducible; `random` for a new one each run), SCHEMATHESIS_ARGS (extra
# `st run` arguments, e.g. `--include-path-regex /counters`).
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
CACHE="${CHRONOS_CACHE:-$HOME/.cache/chronos-test}"
VENV="$CACHE/schemathesis-venv"
BIN="${CHRONOS_BIN:-${CARGO_TARGET_DIR:-target}/debug/chronos}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
SEED="${SCHEMATHESIS_SEED:-20240611}"

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }

# --- install (once) ---------------------------------------------------------------------------
if [ "$("$VENV/bin/st" --version 2>/dev/null || true)" != "st, version $ST_VERSION" ]; then
  log "installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
  log "installed $("$VENV/bin/st" --version)"
else
  log "schemathesis $ST_VERSION already installed in $VENV"
fi

if [ ! -x "$BIN" ]; then
  log "no chronos binary at $BIN (run \`cargo build --locked --bin chronos\` or set CHRONOS_BIN)"
  exit 1
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# --- start the server -------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/chronos-schemathesis.XXXXXX")"
SERVER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$WORK/server.log" ]; then
    # The causes of 5xx answers are logged at ERROR with the request id schemathesis shows.
    log "server log, all but the per-request INFO lines (last 40):"
    grep -v ' INFO ' "$WORK/server.log" | tail -n 40 >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
cat >"$WORK/tokens.yaml" <<EOF
tokens:
  - name: schemathesis
    token: $TOKEN
    databases: ["*"]
    scopes: [admin]
EOF
chmod 600 "$WORK/tokens.yaml"

log "starting $BIN serve on $URL (data in $WORK/data)"
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --tokens "$WORK/tokens.yaml" \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 150); do # 150 x 0.2 s = 30 s at most
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited before it was ready"
    exit 1
  fi
  if python3 - "$URL/readyz" <<'PY' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
    ready=1
    break
  fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  log "the server was not ready within 30 s"
  exit 1
fi
log "server ready"

# --- run schemathesis -------------------------------------------------------------------------
# The token goes in through the environment, so it appears in no command line.
export CHRONOS_ST_TOKEN="$TOKEN"
cat >"$WORK/schemathesis.toml" <<'EOF'
[auth.openapi.bearer]
bearer = "${CHRONOS_ST_TOKEN}"

# Embedded mode has exactly one database, `default`; any other {db} is a (correct) 404.
[parameters]
"path.db" = "default"

# A schema-valid request may still be refused because of the item's state: besides the default
# 404 (no such item) and 409 (expectedOv stale), a stale If-Match is 412 Precondition Failed,
# which is what RFC 9110 prescribes, and an erased item is 410 Gone (like a missing one's 404).
# That is not a rejection of the request's data.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", 401, 403, 404, 409, 410, 412, 429, "5xx"]
EOF

# Rules OpenAPI cannot state about parameters, or that depend on the deployment, so a request can
# be schema-valid and still be (rightly) refused. Only those refusals, recognised by the request
# and the error the API answers, are dropped, and only for the positive_data_acceptance check
# (ST202); every other check (status documented, body schema, no 5xx, ...) still sees them.
cat >"$WORK/hooks.py" <<'EOF'
import schemathesis

ITEM = "/v1/{db}/{collection}/items/{id}"
ITEMS = "/v1/{db}/{collection}/items"


def _error(response):
    try:
        body = response.json()
    except Exception:
        return {}
    return body if isinstance(body, dict) else {}


def _legitimate(case, status, error):
    path, query = case.operation.path, case.query or {}
    headers = {k.lower() for k in (case.headers or {})}
    message = str(error.get("message", ""))
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    # GET an item: `ov` and `at` each pick a version; both at once is a contradiction.
    if status == 400 and path == ITEM and "ov" in query and "at" in query:
        return message.startswith("give `ov` or `at`")
    # Writes: If-Match and expectedOv are two spellings of one precondition; two different
    # values are a contradiction.
    if status == 400 and "if-match" in headers and "expectedOv" in query:
        return message.endswith("disagree")
    # List: `filter` is JSON text naming the collection's *indexed* properties, which come from
    # the collection's configuration, so no schema can say which filters are valid.
    if status == 400 and path == ITEMS and "filter" in query:
        return details.get("field") == "filter" or message.startswith("`filter`")
    # The change feed's `filter`: the same rule as the list's.
    if status == 400 and path == "/v1/{db}/{collection}/changes" and "filter" in query:
        return details.get("field") == "filter" or message.startswith("`filter`")
    # Erase by filter: the same rule as the list's `filter` (indexed properties come from the
    # collection's configuration).
    if status == 422 and path == "/v1/{db}/{collection}/erase":
        return details.get("field") == "filter"
    # Restoring an item to a version that is a delete is refused: depends on the item's history.
    if status == 422 and path == ITEM + "/restore":
        return details.get("field") == "target"
    # `presign=true` needs an S3 payload store, and this run is embedded (documented 422).
    if status == 422 and path in (ITEM, ITEMS) and query.get("presign") in (True, "true"):
        return details.get("field") == "presign"
    return False


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    if failure.code != "ST202":
        return True
    return not _legitimate(case, response.status_code, _error(response))
EOF
export SCHEMATHESIS_HOOKS="$WORK/hooks.py"

seed_args=(--seed "$SEED")
if [ "$SEED" = random ]; then seed_args=(); fi

log "running schemathesis (max $MAX_EXAMPLES examples per operation)"
started=$SECONDS
# shellcheck disable=SC2086 # SCHEMATHESIS_ARGS is split on purpose
(
  cd "$WORK" # schemathesis writes its cache and reports into the working directory
  # `timeout`: a hung request loop must not hold CI; at the defaults this takes about 1 min.
  # One worker: with two threads, Hypothesis' lambda descriptions (ast.parse) now and then hit
  # CPython 3.11's "AST constructor recursion depth mismatch" and abort a run with a tool error.
  timeout 300 "$VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.json" \
    --checks all \
    --exclude-path /v1/admin/shutdown \
    --max-examples "$MAX_EXAMPLES" \
    "${seed_args[@]}" \
    --workers 1 \
    --request-timeout 10 \
    --generation-database none \
    --no-color \
    ${SCHEMATHESIS_ARGS:-}
)
log "schemathesis passed in $((SECONDS - started)) s"

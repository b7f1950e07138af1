#!/usr/bin/env bash
# ollama-to-mlx-router: use whichever of mlx-bridge and the real Ollama is up.
#
# The bridge (MLX_BRIDGE_HOST, default 127.0.0.1:11434) is recognised by its /health answer;
# the real Ollama (OLLAMA_UPSTREAM, default 127.0.0.1:11435) by /api/version. Requests go to
# the bridge when it is up, else to Ollama. Needs curl and python3 (for JSON).
set -euo pipefail

PROG=$(basename "$0")
BRIDGE=${MLX_BRIDGE_HOST:-127.0.0.1:11434}
OLLAMA=${OLLAMA_UPSTREAM:-127.0.0.1:11435}
PYTHON=${PYTHON:-python3}
MLX_BRIDGE_CMD=${MLX_BRIDGE_CMD:-mlx-bridge}
PROBE_TIMEOUT=${ROUTER_PROBE_TIMEOUT:-2}

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
  BOLD=$'\033[1m' GREEN=$'\033[32m' RED=$'\033[31m' YELLOW=$'\033[33m' RESET=$'\033[0m'
else
  BOLD='' GREEN='' RED='' YELLOW='' RESET=''
fi

die() { printf '%s%s:%s %s\n' "$RED" "$PROG" "$RESET" "$*" >&2; exit 1; }
note() { printf '%s%s%s\n' "$YELLOW" "$*" "$RESET" >&2; }

# http://host:port for any OLLAMA_HOST-style value (":11434", "0.0.0.0:11434", "https://h/x").
base_url() {
  local value=${1%/}
  case $value in
    http://* | https://*) ;;
    *) value="http://$value" ;;
  esac
  value=${value/\/\/:/\/\/127.0.0.1:}
  value=${value/\/\/0.0.0.0/\/\/127.0.0.1}
  printf '%s' "$value"
}

BRIDGE_URL=$(base_url "$BRIDGE")
OLLAMA_URL=$(base_url "$OLLAMA")

get() { curl -fsS --max-time "$PROBE_TIMEOUT" "$1" 2>/dev/null; }

# Read JSON on stdin and run a Python expression over it as `d` (prints the result).
json() { "$PYTHON" -c "import json, sys; d = json.load(sys.stdin); $1"; }

bridge_up() { get "$BRIDGE_URL/health" | json 'sys.exit(0 if "engine" in d else 1)' 2>/dev/null; }
ollama_up() { get "$OLLAMA_URL/api/version" >/dev/null; }

# Sets TARGET_URL and TARGET_NAME to the first backend that answers.
pick_target() {
  if bridge_up; then
    TARGET_URL=$BRIDGE_URL TARGET_NAME=mlx-bridge
  elif ollama_up; then
    TARGET_URL=$OLLAMA_URL TARGET_NAME=ollama
    note "mlx-bridge is not answering at $BRIDGE_URL: using ollama at $OLLAMA_URL"
  else
    die "neither mlx-bridge ($BRIDGE_URL) nor ollama ($OLLAMA_URL) is answering; try: $PROG start-mlx"
  fi
}

cmd_status() {
  local any=1 version loaded
  if bridge_up; then
    any=0
    loaded=$(get "$BRIDGE_URL/health" | json 'print(", ".join(m["model"] for m in d.get("loaded_models", [])) or "none")')
    version=$(get "$BRIDGE_URL/health" | json 'print(d.get("version", "?"))')
    printf '%-11s %s  %sup%s (version %s, loaded: %s)\n' mlx-bridge "$BRIDGE_URL" "$GREEN" "$RESET" "$version" "$loaded"
  else
    printf '%-11s %s  %sdown%s\n' mlx-bridge "$BRIDGE_URL" "$RED" "$RESET"
  fi
  if version=$(get "$OLLAMA_URL/api/version" | json 'print(d.get("version", "?"))' 2>/dev/null); then
    any=0
    printf '%-11s %s  %sup%s (version %s)\n' ollama "$OLLAMA_URL" "$GREEN" "$RESET" "$version"
  else
    printf '%-11s %s  %sdown%s\n' ollama "$OLLAMA_URL" "$RED" "$RESET"
  fi
  if [ "$any" -ne 0 ]; then
    die "nothing is answering; try: $PROG start-mlx"
  fi
  pick_target 2>/dev/null
  printf 'requests go to: %s%s%s\n' "$BOLD" "$TARGET_NAME" "$RESET"
}

cmd_list() {
  pick_target
  printf '%smodels on %s (%s)%s\n' "$BOLD" "$TARGET_NAME" "$TARGET_URL" "$RESET"
  get "$TARGET_URL/api/tags" | json '
def size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return "%.1f %s" % (n / scale, unit)
    return "%d B" % n
for m in d.get("models", []):
    print("%-40s %10s" % (m.get("name", "?"), size(m.get("size", 0))))' \
    || die "could not list the models of $TARGET_NAME"
}

# Stream a generate request; print the text as it arrives; fail on an error line.
generate() {
  local model=$1 prompt=$2 body
  body=$(MODEL=$model PROMPT=$prompt "$PYTHON" -c \
    'import json, os; print(json.dumps({"model": os.environ["MODEL"], "prompt": os.environ["PROMPT"]}))')
  curl -sS -N --max-time 3600 -H 'Content-Type: application/json' -d "$body" "$TARGET_URL/api/generate" \
    | "$PYTHON" -u -c '
import json, sys
for raw in sys.stdin:
    if not raw.strip():
        continue
    line = json.loads(raw)
    if "error" in line:
        sys.stdout.write("\n")
        sys.exit("error: " + str(line["error"]))
    sys.stdout.write(line.get("response", ""))
    sys.stdout.flush()
sys.stdout.write("\n")'
}

cmd_run() {
  [ $# -ge 2 ] || die "usage: $PROG run MODEL PROMPT"
  local model=$1
  shift
  pick_target
  generate "$model" "$*"
}

cmd_chat() {
  [ $# -eq 1 ] || die "usage: $PROG chat MODEL"
  pick_target
  if command -v "$MLX_BRIDGE_CMD" >/dev/null 2>&1; then
    MLX_BRIDGE_HOST=$TARGET_URL exec "$MLX_BRIDGE_CMD" run "$1"
  elif command -v ollama >/dev/null 2>&1; then
    OLLAMA_HOST=$TARGET_URL exec ollama run "$1"
  fi
  note "no mlx-bridge or ollama CLI found: one prompt at a time, no history (/bye to quit)"
  local line
  while IFS= read -r -p '>>> ' line; do
    [ "$line" = /bye ] && break
    [ -n "$line" ] && generate "$1" "$line"
  done
}

# switch mlx|ollama|auto MODEL: set the model's backend through the bridge's admin API.
cmd_switch() {
  [ $# -eq 2 ] || die "usage: $PROG switch mlx|ollama|auto MODEL"
  local backend=$1 model=$2 quoted found id body response status
  case $backend in mlx | ollama | auto) ;; *) die "unknown backend '$backend': use mlx, ollama or auto" ;; esac
  bridge_up || die "mlx-bridge is not answering at $BRIDGE_URL: the admin API lives there"
  [ -n "${MLX_BRIDGE_ADMIN_TOKEN:-}" ] \
    || die "set MLX_BRIDGE_ADMIN_TOKEN to the token the server was started with"
  quoted=$(MODEL=$model "$PYTHON" -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["MODEL"], safe=""))')
  # 404 when the model has no row and no mapping yet: then a new row is created
  found=$(get "$BRIDGE_URL/api/llm-backends/model/$quoted") || found='{}'
  id=$(printf '%s' "$found" | json 'rows = d.get("rows", []); print(rows[0]["id"] if rows else "")')
  body=$(MODEL=$model BACKEND=$backend "$PYTHON" -c \
    'import json, os; print(json.dumps({"model_name": os.environ["MODEL"], "backend_type": os.environ["BACKEND"], "enabled": True}))')
  local method=POST path=/api/llm-backends
  if [ -n "$id" ]; then method=PUT path="/api/llm-backends/$id"; fi
  response=$(curl -sS --max-time 10 -X "$method" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $MLX_BRIDGE_ADMIN_TOKEN" -d "$body" -w '\n%{http_code}' "$BRIDGE_URL$path") \
    || die "the admin API did not answer"
  status=${response##*$'\n'}
  response=${response%$'\n'*}
  case $status in
    200 | 201)
      printf '%s -> %s%s%s\n' "$(printf '%s' "$response" | json 'print(d["model_name"])')" \
        "$GREEN" "$backend" "$RESET" ;;
    *)
      die "admin API answered $status: $(printf '%s' "$response" | json 'print(d.get("error", d))' 2>/dev/null || printf '%s' "$response")" ;;
  esac
}

usage() {
  cat <<EOF
usage: $PROG COMMAND [ARGS]

  status                      which of mlx-bridge and ollama answer, and where requests go
  list                        models of the backend in use
  run MODEL PROMPT            one prompt, streamed
  chat MODEL                  interactive chat (mlx-bridge run / ollama run)
  start-mlx [OPTIONS]         mlx-bridge start (in the background)
  stop-mlx                    mlx-bridge stop
  switch mlx|ollama|auto MODEL
                              choose the model's backend (admin API; needs MLX_BRIDGE_ADMIN_TOKEN)
  help                        this text

environment:
  MLX_BRIDGE_HOST         the bridge        (now $BRIDGE_URL)
  OLLAMA_UPSTREAM         the real Ollama   (now $OLLAMA_URL)
  MLX_BRIDGE_ADMIN_TOKEN  admin token for switch
  MLX_BRIDGE_CMD          the mlx-bridge command (now $MLX_BRIDGE_CMD)
  NO_COLOR                plain output even on a terminal
EOF
}

main() {
  local command=${1:-help}
  [ $# -gt 0 ] && shift
  case $command in
    status) cmd_status ;;
    list | ls) cmd_list ;;
    run) cmd_run "$@" ;;
    chat) cmd_chat "$@" ;;
    start-mlx) exec "$MLX_BRIDGE_CMD" start "$@" ;;
    stop-mlx) exec "$MLX_BRIDGE_CMD" stop "$@" ;;
    switch) cmd_switch "$@" ;;
    help | -h | --help) usage ;;
    *) usage >&2; die "unknown command '$command'" ;;
  esac
}

main "$@"

#!/usr/bin/env bash
# Smoke-test a running bridge with curl: liveness, listings, one streamed chat.
# Usage: scripts/smoke.sh [MODEL] (honours OLLAMA_HOST / MLX_BRIDGE_HOST, default 127.0.0.1:11434)
set -euo pipefail
host="${MLX_BRIDGE_HOST:-${OLLAMA_HOST:-127.0.0.1:11434}}"
case "$host" in http://*|https://*) base="$host" ;; *) base="http://$host" ;; esac
model="${1:-}"
curl -fsS "$base/" && echo
curl -fsS "$base/api/version" && echo
curl -fsS "$base/api/tags" && echo
if [[ -n "$model" ]]; then
  curl -fsS "$base/api/chat" -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hi\"}]}"
fi

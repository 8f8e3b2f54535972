#!/usr/bin/env bash
# Ask Weft for a chat completion with curl, whole and then streamed.
#   examples/clients/curl.sh [BASE_URL]   (default http://127.0.0.1:8080)
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
curl -sS --fail-with-body "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "default", "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 32}'
echo
curl -sS -N --fail-with-body "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "default", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": true}'

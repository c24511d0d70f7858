#!/usr/bin/env bash
# Build the documentation, serve it on localhost, and take headless Chromium screenshots of
# Home, Concepts and the API reference, to check in a real browser that math is typeset,
# images load and no raw Markdown shows.
#
# Needs the docs extra (pip install -e ".[docs]") and Chromium (Debian: apt-get install
# chromium). Usage: scripts/docs_screenshots.sh [OUTPUT_DIR]   (default: ./docs-screenshots)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs-screenshots}
mkdir -p "$out"
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site" >/dev/null 2>&1

port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/" >/dev/null && break
  sleep 0.1
done

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome)
profile=$(mktemp -d)
for page in "index.html:home" "concepts/index.html:concepts" "api/index.html:api"; do
  path=${page%%:*}
  name=${page##*:}
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1280,1600 \
    --virtual-time-budget=5000 --screenshot="$out/$name.png" \
    "http://127.0.0.1:$port/$path" >/dev/null 2>&1
  echo "$out/$name.png"
done

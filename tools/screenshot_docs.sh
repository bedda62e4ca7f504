#!/usr/bin/env bash
# Render the docs pages (tools/render_docs.py) and screenshot one in headless Chromium (Debian's `chromium`).
# Usage: bash tools/screenshot_docs.sh [page, default index] -> _docs_html/PAGE.png
set -euo pipefail
cd "$(dirname "$0")/.."
page=${1:-index}
python tools/render_docs.py >/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1100,1800 --screenshot="$PWD/_docs_html/$page.png" "file://$PWD/_docs_html/$page.html"
echo "wrote _docs_html/$page.png"

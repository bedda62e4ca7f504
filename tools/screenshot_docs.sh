#!/usr/bin/env bash
# Render the docs pages (tools/render_docs.py) and screenshot one in headless Chromium (Debian's `chromium`).
# Usage: bash tools/screenshot_docs.sh [page, default index] -> _docs_html/PAGE.png
# Math is typeset offline with MathJax from npm (installed once into _docs_html/mathjax).
set -euo pipefail
cd "$(dirname "$0")/.."
page=${1:-index}
mj=_docs_html/mathjax/node_modules/mathjax/MathJax.js
if [ ! -f "$mj" ]; then mkdir -p _docs_html/mathjax && (cd _docs_html/mathjax && npm install --silent mathjax@2); fi
python tools/render_docs.py --mathjax-url "file://$PWD/$mj?config=TeX-AMS_CHTML-full" >/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1100,${HEIGHT:-1800} --virtual-time-budget=5000 --screenshot="$PWD/_docs_html/$page.png" "file://$PWD/_docs_html/$page.html"
echo "wrote _docs_html/$page.png"

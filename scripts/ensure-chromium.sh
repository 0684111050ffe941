#!/usr/bin/env bash
# Headless Chromium, for the test that renders the HTML report at a fixed width
# (tests/test_history.py). al itself never needs it. Installed from Debian's packages when
# this runs as root with apt-get (CI); otherwise the test is skipped, and this says how to
# get it.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
             && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; then
        echo "Installed headless Chromium (for the report layout test)."
        exit 0
    fi
fi
echo "Note: no Chromium; the report layout test will be skipped. Install the 'chromium'" \
     "package to run it."

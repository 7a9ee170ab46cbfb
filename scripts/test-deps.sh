#!/usr/bin/env bash
# System packages the tests use: Debian's chromium (Playwright cannot download its own browser here).
# Installed only when missing and when we may (root or passwordless sudo); otherwise the browser tests skip
# with a reason.
set -u
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "note: could not install chromium; browser tests will be skipped"
  else
    echo "note: chromium is not installed; browser tests will be skipped"
  fi
fi
exit 0

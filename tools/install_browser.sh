#!/usr/bin/env bash
# Put Debian's Chromium and ChromeDriver on this machine for the site test (tests/site), when they are missing.
# Needs root or passwordless sudo and apt-get; where neither is available it says so, and the site test then skips
# with a loud message instead of failing.
set -uo pipefail
# any browser the site test accepts (GitHub's Ubuntu runners bring google-chrome and chromedriver)
for browser in chromium chromium-browser google-chrome; do
  if command -v "$browser" >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
  fi
done
if ! command -v apt-get >/dev/null; then
  echo "install_browser: no apt-get here; install Chromium and chromedriver yourself to run the site test" >&2
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install_browser: not root and no passwordless sudo; run: sudo apt-get install chromium chromium-driver" >&2
  exit 0
fi
echo "install_browser: installing chromium and chromium-driver (Debian packages) for the site test"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
  || echo "install_browser: apt-get could not install chromium; the site test will skip" >&2
exit 0

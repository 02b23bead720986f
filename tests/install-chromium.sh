#!/bin/sh
# Install Debian's headless Chromium and its WebDriver for the console's browser tests
# (tests/e2e/test_console_browser.py), once.
#
#   sh tests/install-chromium.sh      # or: make browser (make test runs it)
#
# A no-op when both are on the machine. Otherwise it installs the packages `chromium` and
# `chromium-driver` with apt-get when it may (root, apt-get present); elsewhere it says what
# to install and succeeds, and the browser tests skip with that reason printed.
set -eu

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: install Debian's chromium and chromium-driver for the console's browser tests" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version

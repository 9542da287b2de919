#!/usr/bin/env bash
# Install accessd from scratch: a venv in .venv, the dependencies, the package
# itself (the `accessd` command) and the MediaPipe detector models.
#   ./install.sh          everything: the door, training, tests (development, CI)
#   ./install.sh --door   the door alone: no TensorFlow, no test tools
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
DOOR_ONLY=
[ "${1:-}" = "--door" ] && DOOR_ONLY=1
# The tests start real servers and windows: a mosquitto broker (MQTT), Xvfb and
# xdotool (the capture window), headless chromium and its driver (the console). They are Debian packages, installed when we can
# (root with apt-get); elsewhere those tests are skipped with a reason.
# ACCESSD_NO_APT=1 skips this step.
if [ -z "$DOOR_ONLY" ] && [ -z "${ACCESSD_NO_APT:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=$(for p in mosquitto xvfb xauth xdotool chromium chromium-driver; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || echo "$p"
    done | xargs)
    if [ -n "$missing" ]; then
        echo "installing test tools from Debian: $missing"
        # Not fatal: without them the daemon works and those tests skip, saying why.
        { apt-get update -qq &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } ||
            echo "warning: could not install $missing; the MQTT, capture-window and browser tests will be skipped" >&2
    fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "$DOOR_ONLY" ]; then
    .venv/bin/python -m pip install --quiet -r requirements.txt
else
    .venv/bin/python -m pip install --quiet -r requirements-dev.txt -r requirements-train.txt
fi
.venv/bin/python -m pip install --quiet --no-deps -e .
# Home Assistant as a real MQTT-discovery client for one test, in a venv of its own (its pins clash with
# ours). Not fatal: without it that test is skipped, saying why. ACCESSD_NO_HA=1 skips this step.
# Reinstalled when requirements-ha.txt changed (a copy is kept in the venv); pip's chatter goes to a log.
if [ -z "$DOOR_ONLY" ] && [ -z "${ACCESSD_NO_HA:-}" ] && ! cmp -s requirements-ha.txt .venv-ha/requirements-ha.txt; then
    echo "installing Home Assistant for its test (requirements-ha.txt, in .venv-ha)"
    rm -rf .venv-ha
    if "$PYTHON" -m venv .venv-ha && .venv-ha/bin/python -m pip install --quiet -r requirements-ha.txt \
            >.venv-ha/pip.log 2>&1; then
        cp requirements-ha.txt .venv-ha/requirements-ha.txt
    else
        tail -5 .venv-ha/pip.log >&2 || true
        echo "warning: Home Assistant not installed; its test will be skipped" >&2
        rm -rf .venv-ha
    fi
fi
.venv/bin/python -m accessd.provision --dest models/detector
echo "installed: .venv/bin/accessd"

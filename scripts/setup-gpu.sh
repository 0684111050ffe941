#!/usr/bin/env bash
# `make setup GPU=1`: the CPU install plus JAX's CUDA build, with JAX as the default Keras
# backend of this venv (KERAS_BACKEND, when set, still wins).
#   setup-gpu.sh check                 before anything is installed: is there an NVIDIA GPU?
#   setup-gpu.sh install VENV SPEC     after the CPU install: add SPEC (e.g. jax[cuda12])
# Any failure leaves the CPU install as it was, working, and exits 1 with one line.
set -u

fail() {
    echo "make setup GPU=1: $1" >&2
    exit 1
}

check() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        fail "no NVIDIA GPU found (nvidia-smi is not installed). Run 'make setup' for the CPU install."
    fi
    if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        fail "nvidia-smi lists no GPU (is the driver loaded?). Run 'make setup' for the CPU install."
    fi
}

install() {
    local venv=$1 spec=$2 py=$1/bin/python site pth
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 1
    pth=$site/al_pipeline_backend.pth
    rollback() {
        rm -f "$pth"
        "$py" -m pip uninstall -y -q jax jaxlib jax-cuda12-plugin jax-cuda12-pjrt \
            jax-cuda13-plugin jax-cuda13-pjrt >/dev/null 2>&1
        fail "$1 JAX was removed again; the CPU install in $venv works as before."
    }
    "$py" -m pip install --quiet "$spec" || rollback "installing '$spec' failed."
    "$py" -m pip check >/dev/null || rollback "'$spec' conflicts with the installed packages."
    KERAS_BACKEND=jax "$py" -c '
import sys, jax
sys.exit(0 if any(d.platform == "gpu" for d in jax.devices()) else 1)' >/dev/null 2>&1 \
        || rollback "JAX was installed but sees no GPU (does the driver match '$spec'? Try jax[cuda13] with driver 580 or newer: make setup GPU=1 JAX_GPU='jax[cuda13]')."
    echo 'import os; os.environ.setdefault("KERAS_BACKEND", "jax")' >"$pth"
    echo "GPU install done: Keras uses JAX on $(nvidia-smi -L | head -1 | cut -d'(' -f1)"
}

case "${1:-}" in
    check) check ;;
    install) install "$2" "$3" ;;
    *) fail "usage: setup-gpu.sh check | install VENV SPEC" ;;
esac

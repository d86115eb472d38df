# shellcheck shell=bash
# PESQ-WB for the quality scripts (scripts/quality, scripts/lab-quality): the
# virtual environment with PyPI's `pesq` and numpy, made once under
# ${XDG_CACHE_HOME:-~/.cache}/natter/quality-venv. The scoring itself is
# scripts/lib/pesq_wb.py. Source this file, then call `pesq_venv`: it sets
# PESQ_PY to the environment's python.
PESQ_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/natter/quality-venv"

pesq_venv() {
    if [ ! -x "$PESQ_VENV/bin/python" ] || ! "$PESQ_VENV/bin/python" -c 'import pesq, numpy' 2>/dev/null; then
        echo "== PESQ: making $PESQ_VENV" >&2
        python3 -m venv "$PESQ_VENV" || {
            echo "quality: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
            return 1
        }
        "$PESQ_VENV/bin/pip" install --quiet pesq numpy
    fi
    PESQ_PY="$PESQ_VENV/bin/python"
}

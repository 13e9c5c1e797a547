#!/usr/bin/env bash
# The GPU ingest bench (bench/gpu_ingest.py) on the device machine, in two steps.
#
# 1. Here, where PyPI answers, from the repository root, once:
#        bash bench/gpu_ingest.sh prepare
#    downloads into .whl/ (ignored through .git/info/exclude) the wheels of what mmsearch
#    imports and the device image lacks (pydantic and pydantic-settings with their needs;
#    torch, transformers, torchvision, numpy and Pillow are there), ~3 MB, at the versions
#    of this checkout's .venv, for the device's Python 3.12 on x86-64.
# 2. One call of the device tool (about 4-6 of the session's 15 device minutes: 1-2 to
#    start the machine, ~2 for the run; timeout 480 s leaves time to rerun once):
#        run(command="bash bench/gpu_ingest.sh device", carry=[".whl"], timeout_s=480)
#    then give_back. The reply's files_at holds gpu_ingest-<time>.json and the log; copy
#    the JSON into bench/results/ (and as gpu_ingest-latest.json) and commit it.
#    Arguments after "device" go to the script (e.g. --n 8192 --batch 512).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pydantic pydantic-core pydantic-settings python-dotenv annotated-types
    typing-inspection typing-extensions)

case "${1:-}" in
prepare)
    mkdir -p .git/info .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    pins=$(.venv/bin/python -c 'import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}")
    .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl $pins
    ls -l .whl
    ;;
device)
    shift
    out=${OUT:-/tmp/gpu-ingest-out}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv || true
    rc=0
    python3 bench/gpu_ingest.py "$@" 2>&1 | tee "$out/gpu_ingest.log" || rc=$?
    cp bench/results/gpu_ingest-2*.json "$out/" 2>/dev/null || true
    exit "$rc"
    ;;
*)
    echo "usage: bash bench/gpu_ingest.sh prepare | device [gpu_ingest.py arguments]" >&2
    exit 2
    ;;
esac

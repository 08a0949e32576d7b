#!/usr/bin/env bash
# Download what the GPU machine (Python 3.12, torch 2.11 cu130, transformers 5.17, no network) lacks to run the
# TurboMind engine and a worker, as manylinux x86_64 cp312 wheels, then cut them into <= 60 MiB parts: the device
# tool carries at most 64 MiB per call, and lmdeploy + cuBLAS 12 are ~700 MB (see docs/gpu.md for the
# staged transfer). Run from the repository root:  bash bench/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-.venv/bin/python}
SRC=.whl-src      # whole wheels (stays here)
PARTS=.whl-parts  # numbered parts, one carried per device call
mkdir -p "$SRC" "$PARTS"
EXCLUDE=$(git rev-parse --git-path info/exclude)  # keep the wheels out of the tree the device tool sends
mkdir -p "$(dirname "$EXCLUDE")"
for d in /.whl-src/ /.whl-parts/ /.whl/; do
  grep -qxF "$d" "$EXCLUDE" 2>/dev/null || echo "$d" >> "$EXCLUDE"
done

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
fetch() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          "${PLATFORMS[@]}" -d "$SRC" "$@"; }

# lmdeploy's TurboMind extension links the CUDA 12 runtime and cuBLAS 12 (versioned symbols: the machine's CUDA 13
# libraries cannot stand in). Its libnccl.so.2 is satisfied by the NCCL torch has already loaded (same soname); if
# that ever fails, add nvidia-nccl-cu12==2.32.3 (352 MB, 6 more parts).
fetch lmdeploy==0.18.0 nvidia-cublas-cu12==12.9.3.13 nvidia-cuda-runtime-cu12==12.9.79
# What `import lmdeploy.serve.core` and `lmdeploy.turbomind` need beyond the machine's packages.
fetch mmengine-lite==0.10.7 addict==2.4.0 yapf==0.43.0 platformdirs==4.14.7 termcolor==3.3.0 pybase64==1.5.1 \
      shortuuid==1.0.13
# The worker's HTTP stack (requirements.txt pins).
fetch fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
      typing-inspection==0.4.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 uvicorn==0.54.0 \
      sse-starlette==3.7.0 httpx-sse==0.4.3 python-multipart==0.0.34

rm -f "$PARTS"/part-*
tar -C "$SRC" -cf - . | split -b 60M -d -a 2 - "$PARTS/part-"
ls -la "$SRC"
echo "$(ls "$PARTS" | wc -l) parts in $PARTS ($(du -sh "$PARTS" | cut -f1)); carry them one per call (docs/gpu.md)"

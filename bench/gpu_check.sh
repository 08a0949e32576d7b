#!/usr/bin/env bash
# The GPU check of the TurboMind engine, sized for a short GPU slot (docs/gpu.md): unpack the TurboMind bundle, check
# that TurboMind loads, run the GPU tests, run the ~2B benchmark. Everything it writes goes to OUTDIR:
#   gpu-check.log (this script's steps and the summary), versions.txt (GPU, Python, torch, transformers, lmdeploy),
#   gpu-tests.log + gpu-tests.xml (pytest, junit) + gpu-outputs.json (TurboMind vs transformers, per case),
#   bench-2b.log + bench-2b.json (tokens/s, TTFT, share of the bandwidth bound).
# Each phase has its own time limit, so the check ends inside its slot whatever happens.
#
#   bash bench/gpu_check.sh OUTDIR [all|tests|bench]      (from the repository root, on the GPU machine)
#
# The bundle (../shared/gpu/turbomind-bundle-cp312.tar.xz, lmdeploy 0.18 for Python 3.12 + CUDA 12 runtime + cuBLAS
# forwarder + the worker's pure-Python packages) must be in .tm/ (git-ignored), and the wheels of bench/gpu_wheels.txt
# in .tm/wheels. It is unpacked to /tmp/site unless that already holds it (a second run on the same machine); the
# wheels are installed over it. Exit status: 0 all passed; 1 a phase failed; 2 bad usage; 3 no CUDA GPU; 4 no
# bundle, or it did not unpack, or is not for this Python, or the worker's modules do not import; 5 TurboMind did
# not load.
set -uo pipefail

OUT=${1:-}
PHASE=${2:-all}
BUNDLE=${TM_BUNDLE:-.tm/turbomind-bundle-cp312.tar.xz}
SITE=${TM_SITE:-/tmp/site}
WHEELS=${TM_WHEELS:-.tm/wheels}
TESTS_S=${GPU_TESTS_S:-330}  # pytest tests/gpu, all of it (outputs first: they matter most)
BENCH_S=${GPU_BENCH_S:-320}  # building the 2B checkpoint + both engines at 1 and 16 streams

if [ -z "$OUT" ]; then
  echo "usage: bash bench/gpu_check.sh OUTDIR [all|tests|bench]" >&2
  exit 2
fi
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu-check.log"; }
die() { log "STOPPED: $2"; exit "$1"; }

case $PHASE in
  all | tests | bench) ;;
  *) die 2 "unknown phase '$PHASE': use all, tests or bench" ;;
esac
log "phase $PHASE, output in $OUT"

if [ -d "$SITE/lmdeploy" ]; then
  log "bundle already unpacked in $SITE"
else
  [ -f "$BUNDLE" ] || die 4 "no bundle at $BUNDLE: copy ../shared/gpu/turbomind-bundle-cp312.tar.xz into .tm/ first"
  if [ -f "$BUNDLE.sha256" ] && command -v sha256sum >/dev/null; then
    want=$(cut -d' ' -f1 "$BUNDLE.sha256")
    have=$(sha256sum "$BUNDLE" | cut -d' ' -f1)
    [ "$want" = "$have" ] || die 4 "bundle checksum differs from $BUNDLE.sha256"
  fi
  log "unpacking $BUNDLE into $SITE"
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$BUNDLE" "$SITE" 2>>"$OUT/gpu-check.log" || die 4 "the bundle did not unpack"
  [ -d "$SITE/lmdeploy" ] || die 4 "the bundle holds no lmdeploy/"
fi
# What the bundle lacks and the machine's image does not hold (bench/gpu_wheels.txt says which and how to fetch them)
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >>"$OUT/gpu-check.log" 2>&1 || die 4 "the wheels in $WHEELS did not install"
fi
for f in lmdeploy/turbomind/_turbomind.cpython-312-x86_64-linux-gnu.so nvidia/cuda_runtime/lib/libcudart.so.12 \
         nvidia/cublas/lib/libcublas.so.12 nvidia/cublas/lib/libcublasLt.so.12 \
         fastapi/__init__.py uvicorn/__init__.py; do
  [ -e "$SITE/$f" ] || die 4 "the unpacked bundle lacks $f (TurboMind finds CUDA 12 there through its RUNPATH)"
done
[ -e "$SITE/nvidia/__init__.py" ] && die 4 "$SITE/nvidia/__init__.py would hide torch's own nvidia packages"

if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$OUT/gpu-check.log"; then
  die 3 "python3 sees no CUDA GPU (or has no torch): this check runs on the GPU machine (docs/gpu.md)"
fi
python3 -c "import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)" ||
  die 4 "the bundle is built for Python 3.12; python3 here is $(python3 -V 2>&1)"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 GPU_CHECK_OUT="$OUT"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  timeout 120 python3 -c "
import sys, torch, transformers, lmdeploy
print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| lmdeploy', lmdeploy.__version__, '|', torch.cuda.get_device_name(0))" 2>&1
} >"$OUT/versions.txt"
log "$(tail -n 1 "$OUT/versions.txt")"
# The worker's own imports, at the versions it pins (the image's transformers is older than requirements.txt's)
if ! timeout 120 python3 -c "import workers.app, workers.engines.turbomind_engine, workers.engines.transformers_engine
from transformers.utils.chat_template_utils import mark_control_tokens" >>"$OUT/gpu-check.log" 2>&1; then
  die 4 "the worker's imports fail here (above in this log): are the wheels of bench/gpu_wheels.txt in $WHEELS?"
fi

if ! timeout 120 python3 -c "from lmdeploy import turbomind as t; assert t.is_available(), t._import_error" \
     >>"$OUT/gpu-check.log" 2>&1; then
  die 5 "TurboMind's extension did not load (the reason is above in this log)"
fi
log "TurboMind loads"

failed=0
if [ "$PHASE" = all ] || [ "$PHASE" = tests ]; then
  log "GPU tests (limit ${TESTS_S}s)"
  # -o addopts= drops pytest.ini's options for plugins that machine may lack; -p no:cacheprovider keeps it read-only
  timeout -k 10 "$TESTS_S" python3 -m pytest tests/gpu/test_turbomind_outputs.py tests/gpu/test_turbomind_gpu.py \
    -m gpu -q -rA -s -p no:cacheprovider -o addopts= \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && log "GPU tests ran past ${TESTS_S}s and were stopped"
  log "GPU tests: exit $rc"
  [ "$rc" = 0 ] || failed=1
fi
if [ "$PHASE" = all ] || [ "$PHASE" = bench ]; then
  log "benchmark, ~2B (limit ${BENCH_S}s)"
  timeout -k 10 "$BENCH_S" python3 -m bench.engine_bench_gpu --size 2b --json "$OUT/bench-2b.json" 2>&1 \
    | tee "$OUT/bench-2b.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && log "benchmark ran past ${BENCH_S}s and was stopped"
  log "benchmark: exit $rc"
  [ "$rc" = 0 ] || failed=1
fi
log "done: $([ "$failed" = 0 ] && echo 'all passed' || echo 'a phase FAILED')"
exit "$failed"

#!/usr/bin/env bash
# device_attn.sh — runs the attention test and benchmark on the GPU machine and leaves the logs in $OUT.
#
# Build here first (CUDA build dir, e.g. build-attn), then copy the two programs where the device run finds them:
#     cmake --build build-attn --target test_gpu_attn bench_attn
#     mkdir -p .carry/attn && cp build-attn/tests/test_gpu_attn build-attn/bench/bench_attn .carry/attn/
# and on the device (the run tool, carry .carry): bash bench/device_attn.sh [bench_attn options]
# The system cuDNN there is 9.14 (wrong FP8 output above 1024 tokens); the Python environment's 9.19 goes first.
# The test and bench need only libcudnn.so.9 besides the C library (cudart is linked statically).
set -u
OUT=${OUT:-/tmp/attn_out}
mkdir -p "$OUT"
BIN=${BIN:-.carry/attn}
CUDNN_DIR=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib
export LD_LIBRARY_PATH=$CUDNN_DIR:$PWD/.carry/lib:${LD_LIBRARY_PATH:-}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv 2>&1 | tee "$OUT/gpu.txt"
ldd "$BIN/test_gpu_attn" > "$OUT/ldd.txt" 2>&1
grep -E "cudnn|not found" "$OUT/ldd.txt"

# cuDNN's own diagnostics (warnings and errors: why an engine or graph was refused)
export CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG="$OUT/cudnn_dbg.log"
echo "=== test_gpu_attn"
"$BIN/test_gpu_attn" > "$OUT/test.log" 2>&1
echo "test_gpu_attn rc=$?" | tee -a "$OUT/test.log"
grep -E "^case|^  case|reuse|info:|FAIL|FATAL|checks|device|plans built|amax|cache" "$OUT/test.log" | head -120
echo "=== bench_attn $*"
"$BIN/bench_attn" "$@" > "$OUT/bench.log" 2> "$OUT/bench.err"
echo "bench_attn rc=$?"
grep -v "^attn " "$OUT/bench.log"
tail -5 "$OUT/bench.err"
# keep the debug log within what comes back
if [ -f "$OUT/cudnn_dbg.log" ]; then
    sz=$(stat -c %s "$OUT/cudnn_dbg.log")
    [ "$sz" -gt 8000000 ] && { tail -c 8000000 "$OUT/cudnn_dbg.log" > "$OUT/cudnn_dbg.tail"; rm "$OUT/cudnn_dbg.log"; }
fi
exit 0

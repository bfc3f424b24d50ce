#!/usr/bin/env bash
# device_attn.sh — runs the attention tests and benchmark on the GPU machine and leaves the logs in $OUT.
#
# Build here first (CUDA build dir, e.g. build-fp8), then copy the programs where the device run finds them:
#     cmake --build build-fp8 --target test_fp8_quant test_gpu_attn bench_attn
#     mkdir -p .carry/fp8 && cp build-fp8/tests/test_fp8_quant build-fp8/tests/test_gpu_attn \
#         build-fp8/bench/bench_attn .carry/fp8/
# and on the device (the run tool, carry .carry/fp8 and .carry/lib):
#     bash bench/device_attn.sh --e2e            # issue 6's benchmark: BF16 QKV -> projection input, both ways
#     bash bench/device_attn.sh                  # the attention call alone
# Environment: BIN (.carry/fp8), TESTS (test programs of $BIN run first, default "test_fp8_quant"; "" for none),
# TEST_TIMEOUT (s, 200), BENCH_TIMEOUT (s, 300), CUDNN_DBG=1 keeps cuDNN's diagnostics in $OUT/cudnn_dbg.log.
# The system cuDNN there is 9.14 (wrong FP8 output above 1024 tokens); the Python environment's 9.19 goes first.
# The programs need libcudnn.so.9 and libcublasLt.so.13 (CUDA's) besides the C library (cudart is static).
set -u
OUT=${OUT:-/tmp/attn_out}
mkdir -p "$OUT"
BIN=${BIN:-.carry/fp8}
TESTS=${TESTS-test_fp8_quant}
. "$(dirname "$0")/device_env.sh"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv 2>&1 | tee "$OUT/gpu.txt"
ldd "$BIN/bench_attn" > "$OUT/ldd.txt" 2>&1
grep -E "cudnn|cublas|not found" "$OUT/ldd.txt"

if [ "${CUDNN_DBG:-0}" = 1 ]; then export CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG="$OUT/cudnn_dbg.log"; fi
for t in $TESTS; do
    echo "=== $t"
    timeout "${TEST_TIMEOUT:-200}" "$BIN/$t" > "$OUT/$t.log" 2>&1
    echo "$t rc=$?" | tee -a "$OUT/$t.log"
    grep -E "FAIL|FATAL|SKIP|checks|differ|cos|probe|descale|device|cuDNN" "$OUT/$t.log" | head -150
done
echo "=== bench_attn $*"
timeout "${BENCH_TIMEOUT:-300}" "$BIN/bench_attn" "$@" > "$OUT/bench.log" 2> "$OUT/bench.err"
echo "bench_attn rc=$?"
grep -v "^attn \|^e2e \|^piece " "$OUT/bench.log"
tail -5 "$OUT/bench.err"
# keep the debug log within what comes back
if [ -f "$OUT/cudnn_dbg.log" ]; then
    sz=$(stat -c %s "$OUT/cudnn_dbg.log")
    [ "$sz" -gt 8000000 ] && { tail -c 8000000 "$OUT/cudnn_dbg.log" > "$OUT/cudnn_dbg.tail"; rm "$OUT/cudnn_dbg.log"; }
fi
exit 0

#!/usr/bin/env bash
# device_reliability.sh — issue 13's GPU half, on the GPU machine (binaries in .carry/final, libraries in .carry/lib):
#   tests      every GPU test program once, plainly
#   sanitize   compute-sanitizer memcheck (with leak check) and racecheck over the kernel tests, memcheck and
#              initcheck over a whole `vitd encode` on the GPU backend (patch embed to mergers, cuDNN and cuBLASLt
#              included), synccheck over the kernel tests
#   fault      test_device_fault: a real illegal-address kernel in a running GPU server (503, /ready, exit 3)
#   soak       bench_soak --backend gpu for SOAK_SECONDS (300) with 64 clients, GPU memory sampled every 10 s
# Usage: bench/device_reliability.sh [tests] [sanitize] [fault] [soak]   (default: tests sanitize fault)
# One summary line per step; logs in $OUT. Each step has its own timeout so one call stays under its limit.
set -u
OUT=${OUT:-/tmp/reliability_out}
mkdir -p "$OUT"
BIN=$PWD/.carry/final
. "$(dirname "$0")/device_env.sh"
mkdir -p build-cuda && ln -sf "$BIN/vitd" build-cuda/vitd
steps=("$@")
[ ${#steps[@]} = 0 ] && steps=(tests sanitize fault)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

step() {   # step NAME TIMEOUT CMD...: runs CMD, logs to $OUT/NAME.log, prints one line
    local name=$1 limit=$2; shift 2
    local s; s=$(date +%s.%N)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    printf '%-34s rc=%-3s %6.1f s  %s\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $s" | bc)" \
        "$(grep -E 'ERROR SUMMARY|passed|FAIL|verdict|skip' "$OUT/$name.log" | tail -1 | cut -c1-150)"
    grep -E "^FAIL|Invalid|Race reported|Uninitialized|Leaked|Barrier error" "$OUT/$name.log" | sort | uniq -c | head -8
}

CS="compute-sanitizer --error-exitcode 9 --print-limit 20"
GPU_TESTS="test_kernels test_gpu_attn test_fp8_quant test_gpu_engine test_fp8_engine"
for st in "${steps[@]}"; do
    case $st in
    tests)
        for t in $GPU_TESTS; do step "$t" 240 "$BIN/$t"; done ;;
    sanitize)
        mkdir -p "$OUT/models"
        "$BIN/vitd" demo-model --preset tiny --out /tmp/tiny >/dev/null 2>&1
        imgs="tests/fixtures/images/rocket.jpg tests/fixtures/images/chelsea.png"
        step memcheck_test_kernels 300 $CS --tool memcheck --leak-check full "$BIN/test_kernels"
        step racecheck_test_kernels 300 $CS --tool racecheck "$BIN/test_kernels"
        step synccheck_test_kernels 200 $CS --tool synccheck "$BIN/test_kernels"
        step memcheck_test_fp8_quant 200 $CS --tool memcheck --leak-check full "$BIN/test_fp8_quant"
        step racecheck_test_fp8_quant 200 $CS --tool racecheck "$BIN/test_fp8_quant"
        step memcheck_test_gpu_attn 300 $CS --tool memcheck "$BIN/test_gpu_attn"
        for a in bf16 fp8; do
            step "memcheck_encode_$a" 200 $CS --tool memcheck --leak-check full "$BIN/vitd" encode --model /tmp/tiny \
                --backend gpu --attn-dtype "$a" --out "$OUT/enc_$a.safetensors" $imgs
        done
        step initcheck_encode_bf16 200 $CS --tool initcheck "$BIN/vitd" encode --model /tmp/tiny --backend gpu \
            --attn-dtype bf16 --out "$OUT/init.safetensors" $imgs ;;
    fault)
        step test_device_fault 120 "$BIN/test_device_fault" ;;
    soak)
        ( while sleep 10; do nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader; done ) \
            >"$OUT/gpu_mem.csv" 2>&1 &
        mon=$!
        step soak_gpu $(( ${SOAK_SECONDS:-300} + 120 )) "$BIN/bench_soak" --backend gpu \
            --seconds "${SOAK_SECONDS:-300}" --clients 64 --sample 10
        kill $mon
        grep -E "^soak t=" "$OUT/soak_gpu.log" | awk 'NR % 3 == 1' | cut -c1-140
        grep -E "^soak seconds" "$OUT/soak_gpu.log"
        echo "GPU memory used (first, last): $(head -1 "$OUT/gpu_mem.csv") / $(tail -1 "$OUT/gpu_mem.csv")" ;;
    *) echo "unknown step $st" ;;
    esac
done

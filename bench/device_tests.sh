#!/usr/bin/env bash
# device_tests.sh — every GPU test program on the GPU machine (binaries in .carry/final, libraries in .carry/lib),
# one summary line each; logs in $OUT. Built in build-cuda here (TESTS="..." picks a subset).
set -u
OUT=${OUT:-/tmp/tests_out}
mkdir -p "$OUT"
BIN=$PWD/.carry/final
. "$(dirname "$0")/device_env.sh"
# Tests that run the program find it at the path compiled into them (VITD_EXE = <build dir>/vitd).
mkdir -p build-cuda && ln -sf "$BIN/vitd" build-cuda/vitd
for t in ${TESTS:-test_kernels test_gpu_attn test_fp8_quant test_gpu_engine test_fp8_engine}; do
    s=$(date +%s)
    timeout 300 "$BIN/$t" > "$OUT/$t.log" 2>&1
    echo "$t rc=$? ($(( $(date +%s) - s )) s): $(tail -1 "$OUT/$t.log")"
    grep -oE "FAIL [^ ]+: .*" "$OUT/$t.log" | head -5
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

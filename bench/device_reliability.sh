#!/usr/bin/env bash
# device_reliability.sh — issue 13's GPU half, on the GPU machine (binaries in .carry/final, libraries in .carry/lib):
#   tests      every GPU test program once, plainly
#   memcheck   compute-sanitizer memcheck (with leak check) and synccheck over the kernel tests, memcheck and
#              initcheck over a whole `vitd encode` on the GPU backend (patch embed to mergers, cuDNN and cuBLASLt
#              included)
#   racecheck  compute-sanitizer racecheck over the kernel tests (races in vitd's kernels listed apart from the
#              library kernels')
#   sanitize   memcheck + racecheck
#   fault      test_device_fault: a real illegal-address kernel in a running GPU server (503, /ready, exit 3)
#   soak       bench_soak --backend gpu for SOAK_SECONDS (300) with 64 clients, GPU memory sampled every 10 s
# Usage: bench/device_reliability.sh [tests] [memcheck] [racecheck] [sanitize] [fault] [soak]
#        (default: tests sanitize fault)
# One summary line per step; logs packed in $OUT/logs_<steps>.tgz. Each step has its own timeout, and none starts
# after DEADLINE seconds, so one call stays under its limit.
set -u
OUT=${OUT:-/tmp/reliability_out}
mkdir -p "$OUT"
BIN=$PWD/.carry/final
. "$(dirname "$0")/device_env.sh"
mkdir -p build-cuda && ln -sf "$BIN/vitd" build-cuda/vitd
steps=("$@")
[ ${#steps[@]} = 0 ] && steps=(tests sanitize fault)
steps=($(for x in "${steps[@]}"; do if [ "$x" = sanitize ]; then echo memcheck racecheck; else echo "$x"; fi; done))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

T0=$(date +%s)
DEADLINE=${DEADLINE:-540}   # seconds from the start after which no step begins (the call's limit is 600)
NAME=logs_$(IFS=_; echo "${steps[*]}")
LOGS=$OUT/$NAME              # one log per step, packed into $OUT/$NAME.tgz at the end
mkdir -p "$LOGS"
step() {   # step NAME TIMEOUT CMD...: runs CMD, logs to $LOGS/NAME.log, prints one line
    local name=$1 limit=$2; shift 2
    local left=$(( DEADLINE - ($(date +%s) - T0) ))
    if [ "$left" -lt 20 ]; then printf '%-34s not run: out of time\n' "$name"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local s; s=$(date +%s%N)
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    local ms=$(( ($(date +%s%N) - s) / 1000000 ))
    local last; last=$(grep -E 'ERROR SUMMARY|checks,|passed|verdict|skip' "$LOGS/$name.log" | tail -1)
    [ -n "$last" ] || last=$(tail -1 "$LOGS/$name.log")
    printf '%-34s rc=%-3s %5d.%d s  %s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000 / 100)) \
        "$(echo "$last" | cut -c1-150)"
    grep -E "^FAIL|Invalid|Uninitialized|Leaked|Barrier error" "$LOGS/$name.log" | sort | uniq -c | head -8
    if grep -q "Race reported" "$LOGS/$name.log"; then
        # racecheck: races inside vendor kernels (cuBLASLt's nvjet/cutlass, cuDNN's generated kernels, whose
        # shared memory is fed by TMA and ordered by mbarriers racecheck does not model) are listed apart from
        # races in vitd's own kernels (which would be vitd's bugs)
        local total ours
        total=$(grep -c "Race reported" "$LOGS/$name.log")
        ours=$(grep "Race reported" "$LOGS/$name.log" | grep -vcE " at (nvjet|cutlass|cudnn|sm90_xmma|xmma)")
        echo "    races in vitd's kernels: $ours; in library kernels: $((total - ours)), in:" \
             "$(grep -oE "Race reported between [A-Za-z]+ access at [A-Za-z0-9_]+" "$LOGS/$name.log" |
                awk '{print $NF}' | sed -E 's/_[0-9]+x[0-9]+.*//' | sort -u | tr '\n' ' ')"
    fi
}
pack() { tar czf "$OUT/$NAME.tgz" -C "$LOGS" . && rm -rf "$LOGS"; }
trap pack EXIT

CS="compute-sanitizer --error-exitcode 9 --print-limit 20"
GPU_TESTS="test_kernels test_gpu_attn test_fp8_quant test_gpu_engine test_fp8_engine"
for st in "${steps[@]}"; do
    case $st in
    tests)
        for t in $GPU_TESTS; do step "$t" 240 "$BIN/$t"; done ;;
    racecheck)
        step racecheck_test_kernels 300 $CS --tool racecheck "$BIN/test_kernels"
        step racecheck_test_fp8_quant 300 $CS --tool racecheck "$BIN/test_fp8_quant" ;;
    memcheck)
        "$BIN/vitd" demo-model --preset tiny --out /tmp/tiny >/dev/null 2>&1
        imgs="tests/fixtures/images/rocket.jpg tests/fixtures/images/chelsea.png"
        step memcheck_test_kernels 300 $CS --tool memcheck --leak-check full "$BIN/test_kernels"
        step synccheck_test_kernels 200 $CS --tool synccheck "$BIN/test_kernels"
        step memcheck_test_fp8_quant 200 $CS --tool memcheck --leak-check full "$BIN/test_fp8_quant"
        step memcheck_test_gpu_attn 300 $CS --tool memcheck "$BIN/test_gpu_attn"
        for a in bf16 fp8; do
            step "memcheck_encode_$a" 200 $CS --tool memcheck --leak-check full "$BIN/vitd" encode --model /tmp/tiny \
                --backend gpu --attn-dtype "$a" --out "/tmp/enc_$a.safetensors" $imgs
        done
        step initcheck_encode_bf16 200 $CS --tool initcheck "$BIN/vitd" encode --model /tmp/tiny --backend gpu \
            --attn-dtype bf16 --out /tmp/init.safetensors $imgs ;;
    fault)
        step test_device_fault 120 "$BIN/test_device_fault" ;;
    soak)
        ( while sleep 10; do nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader; done ) \
            >"$OUT/gpu_mem.csv" 2>&1 &
        mon=$!
        step soak_gpu $(( ${SOAK_SECONDS:-300} + 120 )) "$BIN/bench_soak" --backend gpu \
            --seconds "${SOAK_SECONDS:-300}" --clients 64 --sample 10
        kill $mon
        grep -E "^soak t=" "$LOGS/soak_gpu.log" | awk 'NR % 3 == 1' | cut -c1-140
        grep -E "^soak seconds" "$LOGS/soak_gpu.log"
        echo "GPU memory used (first, last): $(head -1 "$OUT/gpu_mem.csv") / $(tail -1 "$OUT/gpu_mem.csv")" ;;
    *) echo "unknown step $st" ;;
    esac
done

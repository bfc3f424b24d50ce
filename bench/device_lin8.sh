#!/usr/bin/env bash
# device_lin8.sh — issue 14 on the GPU machine in one call: the FP8-linear and CUDA-graph tests, the regression
# tests of the engine, bench_encoder over attention x linear paths (graphs on, and off for the comparison), and
# Hugging Face eager measured in the same call; logs in $OUT, a summary printed last (and in $OUT/lin8.log).
#
# Build here first with CUDA and carry what the device needs (it lacks libcjson, libmicrohttpd, Debian's libjpeg
# and libstb):
#     cmake --build build-cuda -j2
#     mkdir -p .carry/lin8 .carry/lib
#     cp build-cuda/vitd build-cuda/bench/bench_encoder build-cuda/tests/test_{fp8_linear,lin8_engine,kernels,\
#        gpu_engine,fp8_engine,fp8_quant,gpu_attn,device_fault} .carry/lin8/
#     for l in libcjson.so.1 libmicrohttpd.so.12 libjpeg.so.62 libstb.so.0; do
#         cp -L /usr/lib/x86_64-linux-gnu/$l .carry/lib/; done
# then (run tool, carry .carry/lin8 and .carry/lib):  bash bench/device_lin8.sh [stages...]
# Stages (default: tests bench hf): tests (test_fp8_linear, test_kernels, test_lin8_engine, test_gpu_engine),
# regress (test_fp8_engine, test_device_fault), regress2 (test_fp8_quant, test_gpu_attn), bench (bench_encoder
# --profile on bf16/auto attention x bf16/fp8 linear; BENCH_ARGS adds arguments; LIN_GEMMS the sets of FP8 GEMMs,
# one run each, default "all": bench.log, others bench_<set>.log), graphs (bench_encoder on the small cases with
# --no-graphs and --bf16-out), tune (bench_encoder --no-gemm-tune: cuBLASLt's heuristic first choices against the
# bench stage's tuned ones; TUNE_ATTN the attention paths, default bf16,auto), hf (hf_baseline.py eager), precise
# (bench_encoder --precise-accum: FP8 GEMMs with cuBLASLt's periodic float32 promotion instead of the default fast
# accumulation; auto attention, four cases), short (test_attn_rope, and bench_encoder with vitd's own short-image
# attention against cuDNN's: SHORT_MAX, SHORT_CASES, SHORT_GEMMS), ncu (Nsight Compute's time of every kernel of
# one forward pass, summed per kernel: NCU_CASES (448x448x1), NCU_ATTN (auto), NCU_GEMMS (all)).
# Environment: ITERS (20), HF_ITERS (20), CASES (all), DEADLINE (seconds from the start after which stages are
# skipped, default 560).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/lin8_out}
mkdir -p "$OUT"
BIN=${BIN:-$PWD/.carry/lin8}
. "$(dirname "$0")/device_env.sh"
PY=python3
$PY -c 'import torch, transformers' 2>/dev/null || PY=/opt/torch/.venv/bin/python
STAGES=" ${*:-tests bench hf} "
MODEL=/tmp/vitd_8b
ITERS=${ITERS:-20}
HF_ITERS=${HF_ITERS:-20}
DEADLINE=${DEADLINE:-560}
want() { case "$STAGES" in *" $1 "*) return 0 ;; esac; return 1; }
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
SUM=$OUT/lin8.log
: > "$SUM"
say() { echo "$*" | tee -a "$SUM"; }
# run NAME LIMIT CMD...: runs with a time limit clipped to the deadline; logs to $OUT/NAME.log
run() {
    local name=$1 lim=$2 t0
    shift 2
    local l; l=$(left)
    if [ "$l" -lt 20 ]; then say "$name: skipped (deadline)"; return 0; fi
    [ "$lim" -gt "$l" ] && lim=$l
    t0=$(date +%s)
    timeout "$lim" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    say "$name rc=$rc ($(( $(date +%s) - t0 )) s): $(tail -1 "$OUT/$name.log")"
    grep -E "FAIL|FATAL" "$OUT/$name.log" | head -20 | tee -a "$SUM"
    return 0
}

say "=== $(date -u +%FT%TZ) stages:$STAGES"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv 2>&1 | tee -a "$SUM"
t=$(date +%s)
[ -f $MODEL/model.safetensors ] || "$BIN/vitd" demo-model --preset 8b --out $MODEL >> "$SUM" 2>&1
say "8b demo model ready in $(( $(date +%s) - t )) s"
export VITD_TEST_MODEL_8B=$MODEL
# the tests run the real program from the path compiled into them (VITD_EXE)
[ -x build-cuda/vitd ] || { mkdir -p build-cuda && cp "$BIN/vitd" build-cuda/vitd; }

if want tests; then
    run test_fp8_linear 120 "$BIN/test_fp8_linear"
    grep -E "^  " "$OUT/test_fp8_linear.log" | head -40 >> "$SUM"
    run test_lin8_engine 400 "$BIN/test_lin8_engine"
    grep -E "gate |segments captured|ran linear|tokens [0-9]+:|bad gemm|wrote" "$OUT/test_lin8_engine.log" |
        tee -a "$SUM"
    run test_kernels 200 "$BIN/test_kernels"
    run test_gpu_engine 300 "$BIN/test_gpu_engine"
fi
if want regress; then
    run test_fp8_engine 300 "$BIN/test_fp8_engine"
    run test_device_fault 120 "$BIN/test_device_fault"
fi
if want regress2; then
    run test_fp8_quant 120 "$BIN/test_fp8_quant"
    run test_gpu_attn 200 "$BIN/test_gpu_attn"
fi
if want bench; then
    for gm in ${LIN_GEMMS:-all}; do
        name=bench
        [ "$gm" = all ] || name=bench_${gm//,/+}
        run $name "${BENCH_LIMIT:-300}" "$BIN/bench_encoder" --model $MODEL --iters "$ITERS" --attn bf16,auto \
            --linear bf16,fp8 --linear-gemms "$gm" ${CASES:+--cases $CASES} --profile ${BENCH_ARGS:-}
        grep -E "^encoder|^stream|^ratio|^linratio|^route|^linroute|^graphs|^gemm_tune" "$OUT/$name.log" |
            sed "s/^/[$gm] /" |
            tee -a "$SUM"
    done
fi
if want graphs; then
    # the small cases without graphs (float32 outputs, as bench), and with bf16 outputs (the server's) both ways
    for v in "nographs --no-graphs" "bf16out --bf16-out" "bf16out_nographs --bf16-out --no-graphs"; do
        set -- $v
        name=bench_$1
        shift
        run $name 120 "$BIN/bench_encoder" --model $MODEL --iters "$ITERS" --attn bf16,auto --linear bf16,fp8 \
            --linear-gemms "${GRAPH_GEMMS:-all}" --cases 448x448x1,448x448x16 "$@"
        grep -E "^encoder|^stream|^graphs" "$OUT/$name.log" | sed "s/^/${name#bench_} /" | tee -a "$SUM"
    done
fi
if want tune; then
    # cuBLASLt's heuristic first choices (--no-gemm-tune) against the tuned ones of the bench stage, same paths
    run bench_notune 200 "$BIN/bench_encoder" --model $MODEL --iters "$ITERS" --attn "${TUNE_ATTN:-bf16,auto}" \
        --linear bf16,fp8 \
        --linear-gemms "${TUNE_GEMMS:-all}" ${CASES:+--cases $CASES} --no-gemm-tune
    grep -E "^stream|^gemm_tune" "$OUT/bench_notune.log" | sed 's/^/notune /' | tee -a "$SUM"
fi
if want short; then
    # vitd's own short-image attention (kernels/attn_rope.cu): its test (errors and kernel timings against rotary
    # pack + cuDNN), then the engine with attn_short_max 0 (cuDNN for every batch) and as measured at start-up (or
    # SHORT_MAX)
    run test_attn_rope 200 "$BIN/test_attn_rope"
    grep -E "^  (timing|.* own |.* cuDNN )" "$OUT/test_attn_rope.log" | tee -a "$SUM"
    for v in "cudnn 0" "own ${SHORT_MAX:-}"; do
        set -- $v
        run bench_short_$1 200 "$BIN/bench_encoder" --model $MODEL --iters "$ITERS" --attn bf16,auto \
            --linear bf16,fp8 --linear-gemms "${SHORT_GEMMS:-all}" --cases "${SHORT_CASES:-448x448x1,448x448x16}" \
            ${2:+--attn-short-max $2} --profile
        grep -E "^encoder|^stream|^route|^stage.*stage=(attention|rope_pack) |attn_short_max" \
            "$OUT/bench_short_$1.log" | sed "s/^/short_$1 /" | tee -a "$SUM"
    done
fi
if want ncu; then
    # Nsight Compute's duration of every kernel of one forward pass (bench_encoder --cuda-profiler-range: the
    # start-up is not profiled), summed per kernel name by bench/ncu_kernels.py: where a small batch's time goes
    NCU=$(ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -z "$NCU" ]; then
        say "ncu: not found"
    else
        run ncu 300 "$NCU" --profile-from-start off --metrics gpu__time_duration.sum --cache-control none \
            --clock-control none --csv "$BIN/bench_encoder" --model $MODEL --iters 3 --warmup 2 \
            --attn "${NCU_ATTN:-auto}" --linear fp8 --linear-gemms "${NCU_GEMMS:-all}" \
            --cases "${NCU_CASES:-448x448x1}" --cuda-profiler-range
        $PY "$(dirname "$0")/ncu_kernels.py" "$OUT/ncu.log" | tee -a "$SUM"
    fi
fi

if want hf; then
    run hf 300 env PYTHONUNBUFFERED=1 $PY bench/hf_baseline.py --model $MODEL --iters "$HF_ITERS" \
        ${CASES:+--cases $CASES}
    grep -E "^hf " "$OUT/hf.log" | tee -a "$SUM"
fi

if want precise; then
    # FP8 GEMMs with cuBLASLt's periodic float32 promotion (--precise-accum) against the default fast accumulation
    run bench_precise 200 "$BIN/bench_encoder" --model $MODEL --iters "$ITERS" --attn auto --linear fp8 \
        --linear-gemms "${PRECISE_GEMMS:-all}" --cases 1024x1024x4,2048x2048x1,448x448x16,448x448x1 --precise-accum
    grep -E "^encoder|^stream" "$OUT/bench_precise.log" | sed 's/^/precise /' | tee -a "$SUM"
fi

# Summary: streams (two batches in flight) per case and path, over HF eager measured above.
$PY - "$OUT/bench.log" "$OUT/hf.log" <<'PYEOF' 2>&1 | tee -a "$SUM"
import re, sys
def lines(path, prefix):
    try:
        return [dict(re.findall(r"(\w+)=(\S+)", l)) for l in open(path) if l.startswith(prefix + " ")]
    except OSError:
        return []
st = {}
for kv in lines(sys.argv[1], "stream"):
    st.setdefault((kv["case"], kv["attn"], kv.get("linear", "bf16")), kv)
hf = {}
for kv in lines(sys.argv[2], "hf"):
    hf.setdefault((kv["case"], kv["mode"]), kv)
cols = [("bf16", "bf16"), ("auto", "bf16"), ("auto", "fp8")]
print("%-12s " % "case" + " | ".join("%s/%s img/s  /eager" % c for c in cols) + " | hf eager")
for case in dict.fromkeys(k[0] for k in st):
    he = hf.get((case, "eager"))
    row = []
    for a, l in cols:
        kv = st.get((case, a, l))
        if kv:
            r = float(kv["img_s"]) / float(he["img_s"]) if he else 0
            row.append("%13.1f %6.2fx" % (float(kv["img_s"]), r))
        else:
            row.append("%13s %7s" % ("-", "-"))
    print("%-12s " % case + " | ".join(row) + " | %8s" % (he["img_s"] if he else "-"))
PYEOF
exit 0

#!/usr/bin/env bash
# device_engine.sh — the GPU engine's tests, benchmark and Hugging Face baseline on the GPU machine, in one call;
# logs in $OUT, a summary (with the vitd / HF ratios) printed last.
#
# Build here first with CUDA and copy what the device needs (the GPU machine lacks libcjson, libmicrohttpd and
# Debian's libjpeg.so.62 / libstb.so.0):
#     cmake -S . -B build-eng -DVITD_CUDA=ON
#     cmake --build build-eng -j2 --target vitd test_kernels test_gpu_attn test_fp8_quant test_gpu_engine \
#         test_fp8_engine bench_encoder
#     mkdir -p .carry/eng .carry/lib
#     cp build-eng/vitd build-eng/tests/test_kernels build-eng/tests/test_gpu_attn build-eng/tests/test_fp8_quant \
#        build-eng/tests/test_gpu_engine build-eng/tests/test_fp8_engine build-eng/bench/bench_encoder .carry/eng/
#     for l in libcjson.so.1 libmicrohttpd.so.12 libjpeg.so.62 libstb.so.0; do
#         cp -L /usr/lib/x86_64-linux-gnu/$l .carry/lib/; done
# then run on the device (run tool, carry .carry/eng and .carry/lib):
#     bash bench/device_engine.sh [stages...]
# Stages (default: test bench hf compare): test (test_kernels + test_gpu_engine), fp8 (test_gpu_attn, test_fp8_quant,
# test_fp8_engine; then test_fp8_engine again with the system cuDNN 9.14, where FP8 must be refused: "nofp8"),
# sanitize (compute-sanitizer memcheck over test_kernels), bench (bench_encoder --profile: every case on bf16, fp8
# and auto; BENCH_ARGS adds arguments), hf (hf_baseline.py eager + e2e), hfcompile
# (torch.compile on the cases in $HF_COMPILE_CASES, default 448x448x16,1024x1024x4), compare (vitd --backend gpu vs
# HF bf16/fp32 on two photos). Environment: ITERS (20), HF_ITERS (20).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/eng_out}
mkdir -p "$OUT"
BIN=${BIN:-$PWD/.carry/eng}
. "$(dirname "$0")/device_env.sh"
PY=python3
$PY -c 'import torch, transformers' 2>/dev/null || PY=/opt/torch/.venv/bin/python
STAGES=" ${*:-test bench hf compare} "
MODEL=/tmp/vitd_8b
ITERS=${ITERS:-20}
HF_ITERS=${HF_ITERS:-20}
want() { case "$STAGES" in *" $1 "*) return 0 ;; esac; return 1; }
SUM=$OUT/engine.log
: > "$SUM"
say() { echo "$*" | tee -a "$SUM"; }

say "=== $(date -u +%FT%TZ) stages:$STAGES"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv 2>&1 | tee -a "$SUM"
ldd "$BIN/vitd" | grep -E "not found|cudnn|cublas" | tee -a "$SUM"
t=$(date +%s)
[ -f $MODEL/model.safetensors ] || "$BIN/vitd" demo-model --preset 8b --out $MODEL >> "$SUM" 2>&1
say "8b demo model ready in $(( $(date +%s) - t )) s"

if want test; then
    t=$(date +%s)
    timeout 300 "$BIN/test_kernels" > "$OUT/test_kernels.log" 2>&1
    say "test_kernels rc=$? ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/test_kernels.log")"
    grep -E "FAIL|CHANGED" "$OUT/test_kernels.log" | head -20 | tee -a "$SUM"
    t=$(date +%s)
    VITD_TEST_MODEL_8B=$MODEL timeout 420 "$BIN/test_gpu_engine" > "$OUT/test_gpu_engine.log" 2>&1
    say "test_gpu_engine rc=$? ($(( $(date +%s) - t )) s): $(tail -1 "$OUT/test_gpu_engine.log")"
    grep -E "FAIL|worst|cpu reference|over budget|too little|no such" "$OUT/test_gpu_engine.log" | head -30 | tee -a "$SUM"
fi
if want fp8; then
    for t in test_gpu_attn test_fp8_quant test_fp8_engine; do
        t0=$(date +%s)
        VITD_TEST_MODEL_8B=$MODEL timeout 300 "$BIN/$t" > "$OUT/$t.log" 2>&1
        say "$t rc=$? ($(( $(date +%s) - t0 )) s): $(tail -1 "$OUT/$t.log")"
        grep -E "FAIL" "$OUT/$t.log" | head -20 | tee -a "$SUM"
    done
    grep -E "worst cosine|wrote at|B / A|table says|attn_dtype fp8:|invalid scales|calibrate: [0-9]" \
        "$OUT/test_fp8_engine.log" | head -30 | tee -a "$SUM"
    # the system cuDNN (9.14 there): FP8 must be a start-up error, auto a BF16 engine
    t0=$(date +%s)
    LD_LIBRARY_PATH=$SYS_LD VITD_TEST_SKIP_8B=1 timeout 120 "$BIN/test_fp8_engine" > "$OUT/nofp8.log" 2>&1
    say "test_fp8_engine (system cuDNN) rc=$? ($(( $(date +%s) - t0 )) s): $(tail -1 "$OUT/nofp8.log")"
    grep -E "FAIL|device:|attn_dtype fp8:" "$OUT/nofp8.log" | head -10 | tee -a "$SUM"
fi
if want sanitize; then
    t=$(date +%s)
    timeout 400 compute-sanitizer --tool memcheck "$BIN/test_kernels" > "$OUT/sanitize.log" 2>&1
    say "compute-sanitizer memcheck test_kernels rc=$? ($(( $(date +%s) - t )) s): $(grep -E 'ERROR SUMMARY' "$OUT/sanitize.log" | tail -1)"
fi
if want bench; then
    t=$(date +%s)
    timeout 300 "$BIN/bench_encoder" --model $MODEL --iters "$ITERS" --profile ${BENCH_ARGS:-} > "$OUT/bench.log" \
        2> "$OUT/bench.err"
    say "bench_encoder rc=$? ($(( $(date +%s) - t )) s)"
    grep -E "^encoder|^stream|^ratio|^route" "$OUT/bench.log" | tee -a "$SUM"
    tail -3 "$OUT/bench.err" | tee -a "$SUM"
fi
if want hf; then
    t=$(date +%s)
    PYTHONUNBUFFERED=1 timeout 400 $PY bench/hf_baseline.py --model $MODEL --iters "$HF_ITERS" > "$OUT/hf.log" 2>&1
    say "hf_baseline rc=$? ($(( $(date +%s) - t )) s)"
    grep -E "^hf |^#|Error|error" "$OUT/hf.log" | tail -12 | tee -a "$SUM"
fi
if want hfcompile; then
    t=$(date +%s)
    # whatever is left of a 520 s call (the run tool's limit is 540 s)
    left=$(( 520 - (t - START) ))
    [ $left -lt 60 ] && left=60
    PYTHONUNBUFFERED=1 timeout $left $PY bench/hf_baseline.py --model $MODEL --iters "$HF_ITERS" --compile --compile-only \
        --cases "${HF_COMPILE_CASES:-448x448x16,1024x1024x4}" >> "$OUT/hf.log" 2>&1
    say "hf_baseline --compile rc=$? ($(( $(date +%s) - t )) s)"
    grep -E "mode=compile|compile " "$OUT/hf.log" | tee -a "$SUM"
fi
if want compare; then
    t=$(date +%s)
    IMGS="tests/fixtures/images/chelsea.png tests/fixtures/images/rocket.jpg"
    {
        "$BIN/vitd" preprocess $IMGS --model $MODEL --out /tmp/eng_pv.safetensors &&
        "$BIN/vitd" encode --model $MODEL --backend gpu $IMGS --out /tmp/eng_vitd.safetensors &&
        PYTHONUNBUFFERED=1 timeout 300 $PY bench/hf_baseline.py --model $MODEL \
            --compare /tmp/eng_pv.safetensors /tmp/eng_vitd.safetensors
    } > "$OUT/compare.log" 2>&1
    say "compare rc=$? ($(( $(date +%s) - t )) s)"
    grep -E "^compare|vitd encode|Error" "$OUT/compare.log" | tee -a "$SUM"
fi

# Summary: vitd vs HF per case (HF eager on GPU-resident inputs is HF's best case; e2e matches what vitd times).
$PY - "$OUT/bench.log" "$OUT/hf.log" <<'EOF' 2>&1 | tee -a "$SUM"
import re, sys
def parse(path, prefix):
    out = {}
    try:
        for line in open(path):
            if not line.startswith(prefix + " "):
                continue
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            if prefix == "encoder" and kv.get("attn", "bf16") != "bf16":
                continue  # the HF comparison uses vitd's BF16 path; FP8 ratios are the "ratio" lines
            out.setdefault((kv["case"], kv.get("mode", "vitd")), kv)  # the first of each, if repeated
    except OSError:
        pass
    return out
v, h = parse(sys.argv[1], "encoder"), parse(sys.argv[2], "hf")
# streams (two batches in flight, the engine's throughput): bf16 and auto
st = {}
try:
    for line in open(sys.argv[1]):
        if line.startswith("stream "):
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            st.setdefault((kv["case"], kv["attn"]), kv)
except OSError:
    pass
print("%-12s %10s %9s | %9s %6s | %9s %6s | %9s %6s | %11s %6s | %11s %6s" % ("case", "vitd img/s", "vitd ms",
      "hf eager", "ratio", "hf e2e", "ratio", "hf compile", "ratio", "stream bf16", "/eager", "stream auto", "/eager"))
for (case, _), kv in v.items():
    vi = float(kv["img_s"])
    row = ["%-12s %10.1f %9.2f" % (case, vi, float(kv["ms"]))]
    for mode in ("eager", "eager_e2e", "compile"):
        hk = h.get((case, mode))
        row.append("%9.1f %5.2fx" % (float(hk["img_s"]), vi / float(hk["img_s"])) if hk else "%9s %6s" % ("-", "-"))
    he = h.get((case, "eager"))
    for attn in ("bf16", "auto"):
        sk = st.get((case, attn))
        if sk and he:
            row.append("%11.1f %5.2fx" % (float(sk["img_s"]), float(sk["img_s"]) / float(he["img_s"])))
        else:
            row.append("%11s %6s" % ("-", "-"))
    print(" | ".join(row))
EOF
exit 0

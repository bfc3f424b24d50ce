#!/usr/bin/env bash
# device_serving.sh — the serving path on the GPU machine: the GPU tests of the bf16 output path and the HTTP
# tests, then bench_http on the 8B demo tower with four ordinary photographs at 1, 4, 16 and 64 clients, for
# float32 answers, bfloat16 answers (the GPU default, output_dtype auto) and cached answers (the output cache on,
# every image seen before), each beside the engine alone, with the server's per-stage times. Logs in $OUT.
#
# Build here with CUDA and copy what the device needs, as device_handover.sh's header says, with these targets:
#     vitd test_gpu_engine test_serving test_http test_handover_http bench_http
# then on the device (run tool, carry .carry/final and .carry/lib):  bash bench/device_serving.sh [tests] [bench]
set -u
OUT=${OUT:-/tmp/serving_out}
mkdir -p "$OUT"
BIN=$PWD/.carry/final
. "$(dirname "$0")/device_env.sh"
mkdir -p build-cuda && ln -sf "$BIN/vitd" build-cuda/vitd   # VITD_EXE compiled into the tests
STAGES=${*:-tests bench}
has() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }

M=/tmp/vitd_8b
I=tests/fixtures/images
if has tests; then
    "$BIN/vitd" demo-model --preset 8b --out $M > "$OUT/demo.log" 2>&1
    VITD_TEST_MODEL_8B=$M timeout 300 "$BIN/test_gpu_engine" > "$OUT/test_gpu_engine.log" 2>&1
    echo "test_gpu_engine rc=$?: $(tail -1 "$OUT/test_gpu_engine.log")"
    grep -E "bfloat16 outputs|^FAIL" "$OUT/test_gpu_engine.log" | head -6
    for t in test_serving test_http test_handover_http; do
        s=$(date +%s)
        timeout 300 "$BIN/$t" > "$OUT/$t.log" 2>&1
        echo "$t rc=$? ($(( $(date +%s) - s )) s): $(tail -1 "$OUT/$t.log")"
        grep -E "^FAIL|FAIL " "$OUT/$t.log" | head -5
    done
fi

if has bench; then
    [ -d $M ] || "$BIN/vitd" demo-model --preset 8b --out $M > "$OUT/demo.log" 2>&1
    IMGS=$I/chelsea.png,$I/rocket.jpg,$I/photo_q90_420.jpg,$I/photo_progressive.jpg
    # name | target | serve flags
    run() {
        local name=$1 target=$2; shift 2
        echo "== $name: $target $*"
        timeout 240 "$BIN/bench_http" --model $M --vitd "$BIN/vitd" --backend gpu --conc 1,4,16,64 --seconds 3 \
            --reps 3 --target "$target" --images $IMGS 2>>"$OUT/bench_http.err" -- "$@" |
            grep -E "^(encoder|http|stages)" | tee -a "$OUT/bench_$name.log"
    }
    run float32 "/v1/encode?dtype=float32" --output-cache-bytes=0
    run bfloat16 "/v1/encode" --output-cache-bytes=0
    run cached "/v1/encode"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

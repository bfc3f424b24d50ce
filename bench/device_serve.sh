#!/usr/bin/env bash
# device_serve.sh — `vitd serve --backend gpu` on the GPU machine: readiness, /v1/model's attention block, one
# encode per format, the per-path batch metric, the loopback load benchmark (bench_http) on the 8B demo model,
# then a SIGTERM drain. Binaries from .carry/final (vitd, bench_http), libraries from .carry/lib; logs in $OUT.
set -u
OUT=${OUT:-/tmp/serve_out}
mkdir -p "$OUT"
BIN=$PWD/.carry/final
. "$(dirname "$0")/device_env.sh"
M=/tmp/vitd_8b
"$BIN/vitd" demo-model --preset 8b --out $M > "$OUT/demo.log" 2>&1
"$BIN/vitd" serve --model $M --backend gpu --port 18080 > "$OUT/serve.log" 2>&1 &
PID=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:18080/ready > /dev/null && break; sleep 0.5; done
echo "ready after ~$((i / 2)) s: $(curl -s http://127.0.0.1:18080/ready)"
curl -s http://127.0.0.1:18080/v1/model > "$OUT/model.json"; head -c 900 "$OUT/model.json"; echo
I=tests/fixtures/images
for f in chelsea.png:image/png rocket.jpg:image/jpeg; do
    curl -s -o "$OUT/${f%%:*}.st" -w "${f%%:*}: %{http_code} %{size_download} bytes %{time_total} s\n" \
        -H 'Accept: application/vnd.safetensors' -H "Content-Type: ${f#*:}" --data-binary @$I/${f%%:*} \
        http://127.0.0.1:18080/v1/encode
done
curl -s -F image=@$I/chelsea.png -F image=@$I/photo_q90_420.jpg http://127.0.0.1:18080/v1/encode | head -c 200; echo
curl -s http://127.0.0.1:18080/metrics | grep -E "^vitd_batches_total|^vitd_build_info|^vitd_images_total" | tee "$OUT/metrics.txt"
kill -TERM $PID; wait $PID; echo "serve exit code $?"
tail -3 "$OUT/serve.log"
# one load run per request target (TARGETS: float32 safetensors answers, then bfloat16 ones)
k=0
for T in ${TARGETS:-/v1/encode /v1/encode?dtype=bfloat16}; do
    k=$((k + 1))
    echo "== target $T"
    timeout 200 "$BIN/bench_http" --model $M --vitd "$BIN/vitd" --backend gpu --conc 1,4,16,64 --seconds 4 --reps 3 \
        --target "$T" --images $I/chelsea.png,$I/rocket.jpg,$I/photo_q90_420.jpg,$I/photo_progressive.jpg \
        2>"$OUT/bench_http$k.err" -- ${SERVE_ARGS:-} | tee "$OUT/bench_http$k.log"
    L=$(grep -o "log=[^ ]*" "$OUT/bench_http$k.log" | head -1 | cut -d= -f2)
    [ -n "$L" ] && [ -f "$L" ] && gzip -c "$L" > "$OUT/serve_http$k.log.gz"
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

#!/usr/bin/env bash
# device_handover.sh — the hand-overs to LLM engines on the GPU machine, whose Python has torch 2.11 and the
# safetensors package (neither as old as Debian's torch 1.13 here, nor absent): the hand-over tests, then the 8B
# demo tower on the GPU behind every route, with bytes and latency per image for one 1024x1024 photo, the vLLM
# part decoded by torch and compared bit for bit with /v1/encode's concat answer, and a loopback load of the
# vLLM route beside /v1/encode in bfloat16. Logs and a summary in $OUT.
#
# Build here with CUDA, then copy what the device needs (it lacks libcjson, libmicrohttpd, Debian's libjpeg.so.62
# and libstb.so.0):
#     cmake -S . -B build-cuda -DVITD_CUDA=ON
#     cmake --build build-cuda -j2 --target vitd test_handover_http test_handover test_torch_archive \
#         test_ec_cache bench_http
#     mkdir -p .carry/final .carry/lib
#     cp build-cuda/vitd build-cuda/tests/test_handover_http build-cuda/tests/test_handover \
#        build-cuda/tests/test_torch_archive build-cuda/tests/test_ec_cache build-cuda/bench/bench_http .carry/final/
#     for l in libcjson.so.1 libmicrohttpd.so.12 libjpeg.so.62 libstb.so.0; do
#         cp -L /usr/lib/x86_64-linux-gnu/$l .carry/lib/; done
# then on the device (run tool, carry .carry/final and .carry/lib):  bash bench/device_handover.sh [tests] [serve] [load]
set -u
OUT=${OUT:-/tmp/handover_out}
mkdir -p "$OUT"
BIN=$PWD/.carry/final
. "$(dirname "$0")/device_env.sh"
mkdir -p build-cuda && ln -sf "$BIN/vitd" build-cuda/vitd   # VITD_EXE compiled into the tests
STAGES=${*:-tests serve load}
has() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
python3 -c 'import torch, safetensors; print("torch", torch.__version__, "safetensors", safetensors.__version__)'

if has tests; then
    for t in test_torch_archive test_handover test_ec_cache test_handover_http; do
        s=$(date +%s)
        timeout 300 "$BIN/$t" > "$OUT/$t.log" 2>&1
        echo "$t rc=$? ($(( $(date +%s) - s )) s): $(tail -1 "$OUT/$t.log")"
        grep -E "^FAIL|FAIL " "$OUT/$t.log" | head -5
    done
    grep -E "torch|safetensors" "$OUT/test_handover_http.log" | sort | uniq -c | head -5
fi

M=/tmp/vitd_8b
I=tests/fixtures/images
if has serve || has load; then
    "$BIN/vitd" demo-model --preset 8b --out $M > "$OUT/demo.log" 2>&1
    python3 -c "from PIL import Image; Image.open('$I/chelsea.png').convert('RGB').resize((1024, 1024), Image.BICUBIC).save('/tmp/photo1024.png')"
fi

if has serve; then
    P=18090
    "$BIN/vitd" serve --model $M --backend gpu --port $P --ec-cache-dir /tmp/ec > "$OUT/serve.log" 2>&1 &
    PID=$!
    for i in $(seq 1 240); do curl -sf http://127.0.0.1:$P/ready > /dev/null && break; sleep 0.5; done
    echo "ready after ~$((i / 2)) s"
    IMG=/tmp/photo1024.png
    B64=$(base64 -w0 $IMG)
    printf '{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"},"uuid":"u1024"}]}],"stream":false}' "$B64" > /tmp/chat.json
    python3 - "$IMG" <<'EOF'
import json, struct, sys
img = open(sys.argv[1], "rb").read()
j = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                            "parameters": {"binary_data_size": 4 + len(img)}}],
                "outputs": [{"name": "CONCAT", "parameters": {"binary_data": True, "datatype": "BF16"}},
                            {"name": "NUM_TOKENS", "parameters": {"binary_data": True}}]}).encode()
open("/tmp/v2.bin", "wb").write(j + struct.pack("<I", len(img)) + img)
open("/tmp/v2.len", "w").write(str(len(j)))
j2 = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                             "data": [__import__("base64").b64encode(img).decode()]}],
                 "outputs": [{"name": "EMBEDS"}]})
open("/tmp/v2.json", "w").write(j2)
EOF
    U=http://127.0.0.1:$P
    H="-H Content-Type:image/png"
    # route name | curl arguments; each run 5 times after a warm-up, median time, answer bytes
    run() {
        local name=$1; shift
        curl -s -o "$OUT/answer_$name" "$@" > /dev/null
        for k in 1 2 3 4 5; do curl -s -o "$OUT/answer_$name" -w "%{http_code} %{size_download} %{time_total}\n" "$@"; done |
            sort -k3 -n | sed -n 3p | awk -v n="$name" '{printf "route %-28s status %s bytes %10d  median %.1f ms\n", n, $1, $2, $3 * 1000}'
    }
    run encode_f32_st --data-binary @$IMG $H -H 'Accept: application/vnd.safetensors' $U/v1/encode
    run encode_bf16_concat_st --data-binary @$IMG $H -H 'Accept: application/vnd.safetensors' "$U/v1/encode?dtype=bfloat16&layout=concat"
    run vllm_inline --data-binary @$IMG $H $U/v1/vllm/image_embeds
    run vllm_ec_cache --data-binary @$IMG $H "$U/v1/vllm/image_embeds?transfer=ec_cache&uuid=e1024"
    run epd_chat --data-binary @/tmp/chat.json -H Content-Type:application/json $U/v1/chat/completions
    run kserve_binary_bf16 --data-binary @/tmp/v2.bin -H "Inference-Header-Content-Length: $(cat /tmp/v2.len)" $U/v2/models/vitd_8b/infer
    run kserve_json_f32 --data-binary @/tmp/v2.json -H Content-Type:application/json $U/v2/models/vitd_8b/infer
    ls -l /tmp/ec/u1024 /tmp/ec/e1024 | grep safetensors
    # torch 2.11 reads the vLLM part and the cache file; both equal /v1/encode's concat bf16 tensor bit for bit
    python3 - "$OUT" <<'EOF'
import base64, io, json, sys, torch
from safetensors.torch import load_file
out = sys.argv[1]
ref = load_file(out + "/answer_encode_bf16_concat_st")["image.0.embeddings"]
part = json.load(open(out + "/answer_vllm_inline"))["content"][0]["image_embeds"]
t = torch.load(io.BytesIO(base64.b64decode(part["image_embeds"], validate=True)), weights_only=True).to_dense()
g = torch.load(io.BytesIO(base64.b64decode(part["image_grid_thw"], validate=True)), weights_only=True)
print("vLLM part: %s %s grid %s; rows = grid.prod()/4: %s; bits equal to /v1/encode concat: %s" % (
    t.dtype, tuple(t.shape), g.tolist(), t.shape[0] == int(g.prod()) // 4, torch.equal(t.view(torch.int16), ref.view(torch.int16))))
for u in ("u1024", "e1024"):
    c = load_file("/tmp/ec/%s/encoder_cache.safetensors" % u)["ec_cache"]
    print("cache %s: %s %s, bits equal: %s" % (u, c.dtype, tuple(c.shape), torch.equal(c.view(torch.int16), ref.view(torch.int16))))
EOF
    curl -s $U/metrics | grep -E "^vitd_handover_(images|bytes)_total|^vitd_ec_cache_(bytes|files|write_seconds_(sum|count))" | tee "$OUT/metrics.txt"
    kill -TERM $PID; wait $PID; echo "serve exit code $?"
fi

if has load; then
    # 64 clients on four photos: the vLLM route (base64 JSON of bf16 torch archives) beside /v1/encode bf16
    for T in "/v1/encode?dtype=bfloat16&layout=concat" "/v1/vllm/image_embeds"; do
        echo "== target $T"
        timeout 200 "$BIN/bench_http" --model $M --vitd "$BIN/vitd" --backend gpu --conc 1,16,64 --seconds 3 --reps 2 \
            --target "$T" --images $I/chelsea.png,$I/rocket.jpg,$I/photo_q90_420.jpg,$I/photo_progressive.jpg \
            2>>"$OUT/bench_http.err" | grep -E "^(encoder|http)" | tee -a "$OUT/bench_http.log"
    done
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

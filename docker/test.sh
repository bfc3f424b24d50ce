#!/usr/bin/env bash
# test.sh — the real container test of docker/Dockerfile, docker/compose.yaml + haproxy.cfg and docker/k8s/, on
# this machine, with no registry and no GPU. Run as root from anywhere:
#
#   docker/test.sh                  run it; exit 0 when every check passed, 1 with the failing check named
#   docker/test.sh --if-available   as above, but exit 77 (skip) when no Docker daemon can be had (for CI)
#
# What it does, every wait bounded:
#   1. a Docker daemon: the one answering on the default socket, else Debian's docker.io (installed with apt-get if
#      missing) started here without a bridge network (--bridge=none --iptables=false; containers use the host
#      network and are talked to on 127.0.0.1 only) and stopped again at the end;
#   2. docker/base.sh: the local Debian base images (debootstrap; cached, about 2 minutes when cold);
#   3. the image, built from docker/Dockerfile on those bases with the CPU-only program (VITD_CUDA=OFF;
#      the production image builds the GPU backend on NVIDIA's bases) — the classic builder caches its layers;
#   4. one container: runs as a non-root user, becomes healthy, answers POST /v1/encode in JSON and in safetensors
#      (tests/fixtures/images/chelsea.png), then drains on `docker stop`: N slow requests in flight all get 200;
#   5. two replicas behind HAProxy (docker/compose.yaml, through docker compose v2, Debian's docker-compose 1.29,
#      or the same containers with plain `docker run` when neither exists): a bounded load of parallel curl loops
#      while one replica is stopped midway and started again; every answer must be 200 and equal the reference;
#   6. the Kubernetes manifests parse and agree with each other and the drain (python3-yaml); vitd loads the
#      ConfigMap's vitd.json.
# Containers, the compose project and the daemon it started are removed on exit; images stay cached (vitd:test,
# vitd:test-build, the vitd-local/* bases; `docker image rm` them to reclaim about 1.2 GB).
# Environment: VITD_TEST_PORT (single-container port, default 18080), VITD_DOCKER_ROOT (data-root of a daemon started
# here, default /var/lib/docker), VITD_TEST_REQUESTS (load-test requests, default 200), VITD_TEST_KEEP=1 (leave the
# work directory with logs and answers), VITD_TEST_COMPOSE=none (start step 5 with docker run even where compose
# exists).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IF_AVAILABLE=0
for a in "$@"; do
    case "$a" in
    --if-available) IF_AVAILABLE=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument '$a'" >&2; exit 2 ;;
    esac
done

IMAGE=vitd:test
LB_IMAGE=vitd-local/haproxy:bookworm
PORT=${VITD_TEST_PORT:-18080}
N_LOAD=${VITD_TEST_REQUESTS:-200}
N_DRAIN=4
PROJECT=vitdtest
IMG_FILE=$ROOT/tests/fixtures/images/chelsea.png
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d /tmp/vitd-docker-test.XXXXXX)
T_START=$(date +%s)
STARTED_DOCKERD=""
COMPOSE=()
PASSED=0

daemon_up() { timeout 10 docker info >/dev/null 2>&1; }
say() { echo "test.sh [$(($(date +%s) - T_START))s]: $*"; }
pass() { PASSED=$((PASSED + 1)); say "ok $PASSED - $*"; }
fail() {
    echo "test.sh: FAIL: $*" >&2
    echo "test.sh: logs and answers are in $WORK" >&2
    VITD_TEST_KEEP=1
    echo "$PASSED passed, 1 failed"
    exit 1
}
skip() { # no Docker daemon can be had: exit 77 with --if-available, else fail
    if [ "$IF_AVAILABLE" = 1 ]; then echo "test.sh: SKIP: $*"; exit 77; fi
    echo "test.sh: FAIL: $* (--if-available skips instead)" >&2
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    if command -v docker >/dev/null && daemon_up; then
        if [ ${#COMPOSE[@]} -gt 0 ]; then
            (cd "$ROOT/docker" && timeout 120 "${COMPOSE[@]}" down -t 40 >>"$WORK/compose.log" 2>&1)
        fi
        for c in $(docker ps -aq --filter "label=vitd.test=1"); do timeout 60 docker rm -f "$c" >/dev/null 2>&1; done
        # images of an older vitd:test and its build stage, untagged by the rebuild
        docker image prune -f --filter "label=org.opencontainers.image.title=vitd" >/dev/null 2>&1
        docker image prune -f --filter "label=vitd.stage=build" >/dev/null 2>&1
    fi
    if [ -n "$STARTED_DOCKERD" ]; then
        say "stopping the Docker daemon it started (pid $STARTED_DOCKERD)"
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
    fi
    if [ "${VITD_TEST_KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until command "$@" succeeds, at most $1 seconds (polling every 0.5 s). Returns 1 on timeout.
wait_for() {
    local secs=$1; shift
    local until=$(($(date +%s) + secs))
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$until" ] || return 1
        sleep 0.5
    done
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" || true; }
is_200() { [ "$(http_code "$1")" = 200 ]; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]; }

# ---------------------------------------------------------------------------------------------------------------
# 1. the Docker daemon
say "work directory $WORK"
[ "$(id -u)" = 0 ] || skip "not root (the test installs Debian packages and runs debootstrap)"
export DEBIAN_FRONTEND=noninteractive
apt_install() { # installs Debian packages $@ that are missing; returns non-zero when apt-get fails
    local missing=""
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    say "apt-get install$missing"
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >>"$WORK/apt.log" 2>&1
}
if ! daemon_up; then
    command -v dockerd >/dev/null || apt_install docker.io || skip "could not install docker.io (see $WORK/apt.log)"
    command -v docker >/dev/null || skip "docker.io installed no docker client"
    DATA_ROOT=${VITD_DOCKER_ROOT:-/var/lib/docker}
    mkdir -p "$DATA_ROOT"
    free_gb=$(df -P -BG "$DATA_ROOT" | awk 'NR == 2 {sub("G", "", $4); print $4}')
    [ "$free_gb" -ge 4 ] || skip "only ${free_gb} GB free under $DATA_ROOT (the test needs about 4 GB)"
    say "starting dockerd (no bridge network, data-root $DATA_ROOT, log $WORK/dockerd.log)"
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false --data-root "$DATA_ROOT" \
        --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    if ! wait_for 60 daemon_up; then
        tail -5 "$WORK/dockerd.log" | sed 's/^/  dockerd: /'
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        wait "$STARTED_DOCKERD" 2>/dev/null || true
        STARTED_DOCKERD=""
        VITD_TEST_KEEP=1
        skip "dockerd did not come up within 60 s (log: $WORK/dockerd.log)"
    fi
fi
say "Docker $(docker version -f '{{.Server.Version}}' 2>/dev/null) on $(docker info -f '{{.Driver}}' 2>/dev/null), data-root $(docker info -f '{{.DockerRootDir}}' 2>/dev/null)"
apt_install curl python3 python3-yaml || fail "could not install curl, python3, python3-yaml (see $WORK/apt.log)"
[ -f "$IMG_FILE" ] || fail "missing test image $IMG_FILE"

# ---------------------------------------------------------------------------------------------------------------
# 2. local base images
t0=$(date +%s)
"$ROOT/docker/base.sh" 2>&1 | tee "$WORK/base.log" | sed 's/^/  /' || fail "docker/base.sh failed"
read -r DEV_BASE RUNTIME_BASE LB_BASE < <("$ROOT/docker/base.sh" --list)
[ "$LB_BASE" = "$LB_IMAGE" ] || fail "base.sh names the balancer image $LB_BASE, expected $LB_IMAGE"
say "base images ready in $(($(date +%s) - t0)) s"

# ---------------------------------------------------------------------------------------------------------------
# 3. the image, built without network (the bases hold everything). The context is only what the Dockerfile
# copies (build directories stay out).
t0=$(date +%s)
# The build stage is tagged too (vitd:test-build), so that the layers of an older build become dangling and are
# pruned on exit while the current ones stay as the next run's cache.
build() { # build [--target STAGE] -t TAG
    (cd "$ROOT" && tar -c CMakeLists.txt config encoder kernels server tests/CMakeLists.txt docker) |
        DOCKER_BUILDKIT=0 timeout 900 docker build --network none -f docker/Dockerfile "$@" \
            --build-arg DEV_BASE="$DEV_BASE" --build-arg RUNTIME_BASE="$RUNTIME_BASE" \
            --build-arg VITD_CUDA=OFF --build-arg CUDNN_VERSION= - >>"$WORK/build.log" 2>&1
}
build --target build -t "$IMAGE-build" && build -t "$IMAGE" ||
    { tail -30 "$WORK/build.log"; fail "docker build failed (log above)"; }
size_mb=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}')
say "image $IMAGE built in $(($(date +%s) - t0)) s, $size_mb MB; its BUILD-INFO:"
docker run --rm --network none --entrypoint cat "$IMAGE" /opt/vitd/BUILD-INFO | sed 's/^/  /' ||
    fail "the image has no /opt/vitd/BUILD-INFO"
pass "image builds on the local bases ($size_mb MB)"

# ---------------------------------------------------------------------------------------------------------------
# 4. one container
port_free "$PORT" || fail "port $PORT is busy (set VITD_TEST_PORT)"
docker run -d --name vitd-test-one --label vitd.test=1 --network host --read-only \
    -e VITD_PORT="$PORT" --health-interval 1s --health-start-period 60s --stop-timeout 40 "$IMAGE" >/dev/null ||
    fail "docker run failed"
user=$(docker inspect -f '{{.Config.User}}' vitd-test-one)
uid=$(docker exec vitd-test-one id -u)
[ "$uid" != 0 ] && [ -n "$uid" ] || fail "the container runs as uid '$uid' (image User '$user')"
pass "runs as a non-root user (uid $uid, image User $user)"

wait_for 60 healthy vitd-test-one || { docker logs vitd-test-one 2>&1 | tail -20; fail "container not healthy within 60 s"; }
pass "becomes healthy ($(docker inspect -f '{{len .State.Health.Log}}' vitd-test-one) probe(s) of /health)"
is_200 "http://127.0.0.1:$PORT/ready" || fail "/ready is not 200 on a healthy container"

curl -s -m 30 -o "$WORK/one.json" -w '%{http_code} %{content_type}\n' -H 'Content-Type: image/png' \
    --data-binary @"$IMG_FILE" "http://127.0.0.1:$PORT/v1/encode" >"$WORK/one.json.status" || true
read -r code ctype <"$WORK/one.json.status" || true
[ "$code" = 200 ] || fail "JSON encode answered HTTP '$code': $(head -c 300 "$WORK/one.json")"
case "$ctype" in application/json*) ;; *) fail "JSON encode answered Content-Type '$ctype'" ;; esac
curl -s -m 30 -o "$WORK/one.st" -w '%{http_code} %{content_type}\n' -H 'Content-Type: image/png' \
    -H 'Accept: application/octet-stream' --data-binary @"$IMG_FILE" "http://127.0.0.1:$PORT/v1/encode" \
    >"$WORK/one.st.status" || true
read -r code ctype <"$WORK/one.st.status" || true
[ "$code" = 200 ] || fail "safetensors encode answered HTTP '$code'"
[ "$ctype" = application/octet-stream ] || fail "safetensors encode answered Content-Type '$ctype'"

# The checker: `check` compares the JSON and safetensors answers of one image; `same DIR` compares every answer
# under DIR (safetensors) with the reference. Prints its figures; exits non-zero with the reason.
cat >"$WORK/check.py" <<'EOF'
import array, json, math, os, struct, sys

def read_st(path):
    b = open(path, "rb").read()
    if len(b) < 10:
        raise SystemExit(f"{path}: {len(b)} bytes, not a safetensors file")
    n = struct.unpack("<Q", b[:8])[0]
    if not (2 <= n <= len(b) - 8) or b[8:9] != b"{":
        raise SystemExit(f"{path}: does not start like a safetensors file (header length {n}, byte {b[8:9]!r})")
    hdr = json.loads(b[8:8 + n])
    data = b[8 + n:]
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        if hi > len(data):
            raise SystemExit(f"{path}: tensor {name} ends at {hi}, past the data ({len(data)} bytes)")
        code = {"F32": "f", "I64": "q"}[t["dtype"]]
        out[name] = (t["shape"], array.array(code, data[lo:hi]))
    return out

def max_abs(a, b):
    return max(abs(x - y) for x, y in zip(a, b))

def check(json_path, st_path):
    d = json.load(open(json_path))
    img = d["data"][0]
    t, h, w = img["grid_thw"]
    tokens, dim = img["shape"]
    if tokens * 4 != t * h * w:
        raise SystemExit(f"JSON: {tokens} tokens for grid {t}x{h}x{w} (expected t*h*w/4)")
    emb = [v for row in img["embedding"] for v in row]
    if len(emb) != tokens * dim or not all(math.isfinite(v) for v in emb):
        raise SystemExit("JSON: embedding has the wrong size or a non-finite value")
    if max(abs(v) for v in emb) == 0:
        raise SystemExit("JSON: embedding is all zeros")
    st = read_st(st_path)
    shape, vals = st["image.0.embeddings"]
    if shape != [tokens, dim]:
        raise SystemExit(f"safetensors: embeddings shape {shape}, JSON says {[tokens, dim]}")
    if list(st["image.0.grid_thw"][1]) != [t, h, w]:
        raise SystemExit("safetensors: grid_thw differs from JSON")
    ds = [k for k in st if k.startswith("image.0.deepstack.")]
    if len(ds) != len(img.get("deepstack") or []):
        raise SystemExit(f"safetensors has {len(ds)} deepstack tensors, JSON {len(img.get('deepstack') or [])}")
    err = max_abs(vals, emb)
    if err > 1e-5:
        raise SystemExit(f"safetensors and JSON embeddings differ: max abs {err:.3g}")
    print(f"grid {t}x{h}x{w}, embeddings [{tokens}, {dim}], {len(ds)} deepstack, JSON vs safetensors max abs {err:.2g}")

def same(ref_path, folder):
    ref = read_st(ref_path)
    worst, n = 0.0, 0
    for f in sorted(os.listdir(folder)):
        got = read_st(os.path.join(folder, f))
        if sorted(got) != sorted(ref):
            raise SystemExit(f"{f}: tensors {sorted(got)} instead of {sorted(ref)}")
        for name, (shape, vals) in ref.items():
            gshape, gvals = got[name]
            if gshape != shape:
                raise SystemExit(f"{f}: {name} has shape {gshape}, expected {shape}")
            e = max_abs(gvals, vals) if len(vals) else 0.0
            scale = max(abs(v) for v in vals) or 1.0
            if e > 1e-4 * scale:
                raise SystemExit(f"{f}: {name} differs from the reference: max abs {e:.3g}")
            worst = max(worst, e)
        n += 1
    print(f"{n} answers equal the reference (max abs difference {worst:.2g})")

if __name__ == "__main__":
    {"check": check, "same": same}[sys.argv[1]](*sys.argv[2:])
EOF
figures=$("$PY" "$WORK/check.py" check "$WORK/one.json" "$WORK/one.st" 2>&1) || fail "encode answers: $figures"
pass "answers POST /v1/encode in JSON and safetensors: $figures"

# Drain: N slow requests (images resized to 1 Mpx, one per batch: about a second each on 2 cores), then docker stop
# once all have reached the server.
docker rm -f vitd-test-one >/dev/null
docker run -d --name vitd-test-drain --label vitd.test=1 --network host --read-only -e VITD_PORT="$PORT" \
    -e VITD_MIN_PIXELS=1048576 -e VITD_BATCH_MAX_IMAGES=1 -e VITD_DRAIN_TIMEOUT_MS=30000 --health-interval 1s \
    "$IMAGE" >/dev/null ||
    fail "docker run (drain) failed"
wait_for 60 is_200 "http://127.0.0.1:$PORT/ready" || fail "drain container not ready within 60 s"
mkdir -p "$WORK/drain"
pids=()
for i in $(seq "$N_DRAIN"); do
    curl -s -m 60 -o "$WORK/drain/$i.st" -w '%{http_code}' -H 'Content-Type: image/png' \
        -H 'Accept: application/octet-stream' --data-binary @"$IMG_FILE" \
        "http://127.0.0.1:$PORT/v1/encode" >"$WORK/drain/$i.code" 2>/dev/null &
    pids+=($!)
done
# The polls share one kept-alive connection (fd 7): the server completes each request on a connection before it
# reads the next, so an earlier poll never counts among the requests in flight (with a fresh connection per poll,
# one not yet completed could stand in for an encode request not yet read, which would then meet the drain)
exec 7<>"/dev/tcp/127.0.0.1/$PORT" || fail "cannot connect to 127.0.0.1:$PORT for /metrics"
metrics_on_7() { # one GET /metrics on fd 7; prints the body
    printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' >&7 || return 1
    local line len=0
    while IFS= read -r -t 5 line <&7; do
        line=${line%$'\r'}
        [ -z "$line" ] && break
        case "${line,,}" in content-length:*) len=${line#*:} && len=${len// /} ;; esac
    done
    [ "$len" -gt 0 ] && head -c "$len" <&7
}
arrived() { # encode requests in flight (vitd_inflight_requests less this /metrics request) + answered >= N
    metrics_on_7 | awk -v n="$N_DRAIN" '
        $1 == "vitd_inflight_requests" {live = $2 - 1; seen = 1}
        $1 ~ /^vitd_requests_total\{route="\/v1\/encode"/ {done += $2}
        END {exit !(seen && live + done >= n)}'
}
until_s=$(($(date +%s) + 20))
until arrived; do
    [ "$(date +%s)" -lt "$until_s" ] ||
        fail "the $N_DRAIN requests did not all reach the server within 20 s (metrics vitd_inflight_requests, vitd_requests_total)"
    sleep 0.1
done
exec 7>&-
t0=$(date +%s%N)
docker stop -t 40 vitd-test-drain >/dev/null || fail "docker stop failed"
stop_ms=$((($(date +%s%N) - t0) / 1000000))
for p in "${pids[@]}"; do wait "$p" || true; done
codes=$(for f in "$WORK"/drain/*.code; do printf '%s ' "$(cat "$f")"; done)
exit_code=$(docker inspect -f '{{.State.ExitCode}}' vitd-test-drain)
docker logs vitd-test-drain >"$WORK/drain.log" 2>&1
for i in $(seq "$N_DRAIN"); do
    [ "$(cat "$WORK/drain/$i.code")" = 200 ] || { tail -15 "$WORK/drain.log"; fail "drain: request $i got '$(cat "$WORK/drain/$i.code")' (all: $codes)"; }
done
[ "$exit_code" = 0 ] || fail "drain: the container exited with $exit_code, not 0"
live=$(grep -o 'draining live=[0-9]*' "$WORK/drain.log" | head -1 | cut -d= -f2)
[ -n "$live" ] || fail "drain: no 'draining live=N' line in the container's log"
[ "$live" -ge 1 ] || fail "drain: nothing was in flight at SIGTERM (requests too fast here: raise VITD_MIN_PIXELS)"
pass "drains on docker stop: $N_DRAIN requests in flight all got 200 (${codes% }), exit 0 after $stop_ms ms ($(grep -o 'draining live=[0-9]*' "$WORK/drain.log"))"
docker rm vitd-test-drain >/dev/null

# ---------------------------------------------------------------------------------------------------------------
# 5. two replicas behind HAProxy, one stopped midway and started again
for p in 8080 8081 8082; do port_free "$p" || fail "port $p is busy (compose.yaml uses 8080-8082)"; done
mkdir -p "$WORK/models"
export VITD_IMAGE="$IMAGE" VITD_LB_IMAGE="$LB_IMAGE" VITD_MODELS_DIR="$WORK/models"
if [ "${VITD_TEST_COMPOSE:-auto}" = none ]; then
    :
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose -p "$PROJECT" -f compose.yaml)
elif command -v docker-compose >/dev/null || apt_install docker-compose; then
    COMPOSE=(docker-compose -p "$PROJECT" -f compose.yaml)
fi
if [ ${#COMPOSE[@]} -gt 0 ]; then
    say "starting compose.yaml with ${COMPOSE[0]}"
    (cd "$ROOT/docker" && timeout 120 "${COMPOSE[@]}" up -d) >"$WORK/compose.log" 2>&1 ||
        { cat "$WORK/compose.log"; fail "compose up failed"; }
    (cd "$ROOT/docker" && "${COMPOSE[@]}" -f compose.gpu.yaml config -q) >>"$WORK/compose.log" 2>&1 ||
        fail "compose.yaml + compose.gpu.yaml do not validate: $(tail -3 "$WORK/compose.log")"
    replica() { (cd "$ROOT/docker" && "${COMPOSE[@]}" ps -q "vitd-$1"); }
    lb_id() { (cd "$ROOT/docker" && "${COMPOSE[@]}" ps -q lb); }
else
    # The same containers compose.yaml describes, with plain docker run.
    say "no docker compose: starting compose.yaml's services with docker run"
    for i in 1 2; do
        docker run -d --name "$PROJECT-vitd-$i" --label vitd.test=1 --network host --read-only --tmpfs /tmp \
            --user 10001:10001 --stop-timeout 40 -v "$VITD_MODELS_DIR:/models/host:ro" \
            -e VITD_HOST=127.0.0.1 -e VITD_PORT=808$i -e VITD_MODEL=/models/tiny -e VITD_DRAIN_TIMEOUT_MS=30000 \
            "$IMAGE" >/dev/null || fail "docker run vitd-$i failed"
    done
    docker run -d --name "$PROJECT-lb" --label vitd.test=1 --network host --read-only --user 65534:65534 \
        --stop-signal SIGUSR1 -v "$ROOT/docker/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" \
        "$LB_IMAGE" >/dev/null || fail "docker run lb failed"
    replica() { docker ps -aq --filter "name=^$PROJECT-vitd-$1\$"; }
    lb_id() { docker ps -aq --filter "name=^$PROJECT-lb\$"; }
fi
R1=$(replica 1); R2=$(replica 2); LB=$(lb_id)
[ -n "$R1" ] && [ -n "$R2" ] && [ -n "$LB" ] || fail "compose did not create vitd-1, vitd-2 and lb"
wait_for 60 is_200 http://127.0.0.1:8081/ready || fail "replica 1 not ready within 60 s"
wait_for 60 is_200 http://127.0.0.1:8082/ready || fail "replica 2 not ready within 60 s"
wait_for 30 is_200 http://127.0.0.1:8080/ready || { docker logs "$LB" 2>&1 | tail; fail "balancer not answering within 30 s"; }
sleep 1.5 # HAProxy's rise 2 at inter 500ms: both replicas in rotation

# Reference answer from replica 2 directly.
curl -s -m 30 -o "$WORK/ref.st" -H 'Content-Type: image/png' -H 'Accept: application/octet-stream' \
    --data-binary @"$IMG_FILE" http://127.0.0.1:8082/v1/encode || fail "reference request failed"

mkdir -p "$WORK/load"
N_LOOPS=4
per=$(((N_LOAD + N_LOOPS - 1) / N_LOOPS))
say "load: $N_LOOPS loops x $per requests through 127.0.0.1:8080; replica 1 stops after 1/3, starts after 2/3"
loop() { # loop K: $per requests in a row, each answer in load/K-i.st and its status in load/K-i.code
    for i in $(seq "$per"); do
        curl -s -m 60 -o "$WORK/load/$1-$i.st" -w '%{http_code}' -H 'Content-Type: image/png' \
            -H 'Accept: application/octet-stream' --data-binary @"$IMG_FILE" \
            http://127.0.0.1:8080/v1/encode >"$WORK/load/$1-$i.code" 2>/dev/null || true
    done
}
t0=$(date +%s)
lpids=()
for k in $(seq "$N_LOOPS"); do loop "$k" & lpids+=($!); done
done_count() { ls "$WORK"/load/*.code 2>/dev/null | wc -l; }
at_least() { [ "$(done_count)" -ge "$1" ]; }
total=$((per * N_LOOPS))
wait_for 120 at_least $((total / 3)) || fail "load: fewer than $((total / 3)) requests done after 120 s"
served_before=$(done_count)
docker stop -t 40 "$R1" >/dev/null || fail "docker stop replica 1 failed"
r1_exit=$(docker inspect -f '{{.State.ExitCode}}' "$R1")
say "replica 1 stopped (exit $r1_exit) after $served_before requests"
# Keep it stopped until HAProxy has taken it out (fall 2 at inter 500ms: about a second): with the output cache
# answering repeats in microseconds the load can otherwise pass its second third before two probes have failed.
lb_saw_down() { docker logs "$LB" 2>&1 | grep -q 'vitd-1 is DOWN'; }
wait_for 30 lb_saw_down || fail "HAProxy did not take replica 1 out within 30 s of its stop"
wait_for 120 at_least $((2 * total / 3)) || fail "load: fewer than $((2 * total / 3)) requests done after 120 s"
docker start "$R1" >/dev/null || fail "docker start replica 1 failed"
say "replica 1 started again after $(done_count) requests"
for p in "${lpids[@]}"; do wait "$p" || true; done
load_s=$(($(date +%s) - t0))
bad=$(grep -L '^200$' "$WORK"/load/*.code || true)
if [ -n "$bad" ]; then
    docker logs "$LB" 2>&1 | grep -v ' 200 ' | tail -10
    fail "load: $(echo "$bad" | wc -l) of $total requests failed, e.g. $(basename "$(echo "$bad" | head -1)"): $(cat "$(echo "$bad" | head -1)")"
fi
[ "$r1_exit" = 0 ] || fail "replica 1 exited with $r1_exit when stopped, not 0"
mkdir -p "$WORK/answers" && mv "$WORK"/load/*.st "$WORK/answers/"
figures=$("$PY" "$WORK/check.py" same "$WORK/ref.st" "$WORK/answers" 2>&1) || fail "load answers: $figures"
lb_saw_up() { docker logs "$LB" 2>&1 | grep -q 'vitd-1 is UP'; }
wait_for 30 lb_saw_up || true
docker logs "$LB" >"$WORK/haproxy.log" 2>&1
n1=$(grep -c 'vitd/vitd-1 .* 200 .*"POST ' "$WORK/haproxy.log" || true)
n2=$(grep -c 'vitd/vitd-2 .* 200 .*"POST ' "$WORK/haproxy.log" || true)
# retried: HAProxy's retries field (actconn/feconn/beconn/srv_conn/retries, two fields before the request) != 0
retried=$(awk '/POST \/v1\/encode/ {for (i = 1; i <= NF; i++) if ($i ~ /^"/) break; split($(i - 2), c, "/"); if (c[5] != "0") n++} END {print n + 0}' "$WORK/haproxy.log")
drained=$(docker logs "$R1" 2>&1 | grep -o 'draining live=[0-9]*' | head -1)
refused=$(docker logs "$R1" 2>&1 | grep -c 'route=/v1/encode status=503' || true)
pass "balancer: $total/$total requests 200 in $load_s s with replica 1 stopped and restarted midway ($figures; served by vitd-1 $n1, vitd-2 $n2; $retried retried on the other replica; vitd-1 stopped with ${drained:-?} and answered $refused with 503 while draining)"
wait_for 30 is_200 http://127.0.0.1:8081/ready || fail "replica 1 not ready again within 30 s of its restart"
grep -q 'vitd-1 is DOWN' "$WORK/haproxy.log" && grep -q 'vitd-1 is UP' "$WORK/haproxy.log" ||
    fail "HAProxy's log does not show replica 1 going DOWN and back UP"
pass "HAProxy took replica 1 out when it stopped and back in once its /ready said 200"

# ---------------------------------------------------------------------------------------------------------------
# 6. Kubernetes manifests
cat >"$WORK/k8s.py" <<'EOF'
import glob, json, os, sys, yaml
docs = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.yaml"))):
    for d in yaml.safe_load_all(open(path)):
        if d:
            assert "apiVersion" in d and "kind" in d and d.get("metadata", {}).get("name"), f"{path}: incomplete object"
            docs[d["kind"]] = d
need = {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"}
assert need <= set(docs), f"missing kinds: {need - set(docs)}"
dep = docs["Deployment"]
pod = dep["spec"]["template"]["spec"]
c = [c for c in pod["containers"] if c["name"] == "vitd"][0]
assert c["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness probe is not /ready"
assert c["livenessProbe"]["httpGet"]["path"] == "/health", "liveness probe is not /health"
assert str(c["resources"]["limits"].get("nvidia.com/gpu")) == "1", "no nvidia.com/gpu limit of 1"
env = {e["name"]: e.get("value") for e in c.get("env", [])}
drain_ms = int(env.get("VITD_DRAIN_TIMEOUT_MS", 30000))
pre = c["lifecycle"]["preStop"]
pre_s = int(pre["sleep"]["seconds"]) if "sleep" in pre else int(pre["exec"]["command"][-1])
grace = pod["terminationGracePeriodSeconds"]
assert grace > pre_s + drain_ms / 1000, f"terminationGracePeriodSeconds {grace} <= preStop {pre_s} s + drain {drain_ms} ms"
assert pod["securityContext"]["runAsNonRoot"] is True
sel = docs["Service"]["spec"]["selector"]
labels = dep["spec"]["template"]["metadata"]["labels"]
assert all(labels.get(k) == v for k, v in sel.items()), "the Service selects no pod of the Deployment"
assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
cm = json.loads(docs["ConfigMap"]["data"]["vitd.json"])
assert cm.get("drain_timeout_ms", drain_ms) == drain_ms, "the ConfigMap's drain_timeout_ms differs from the env"
open(sys.argv[2], "w").write(docs["ConfigMap"]["data"]["vitd.json"])
print(f"{len(docs)} kinds; grace {grace} s > preStop {pre_s} s + drain {drain_ms / 1000:.0f} s")
EOF
figures=$("$PY" "$WORK/k8s.py" "$ROOT/docker/k8s" "$WORK/k8s-vitd.json" 2>&1) || fail "k8s manifests: $figures"
# The ConfigMap's vitd.json, loaded by the image's vitd exactly as the pod would (an unknown key fails)
docker run --rm --network none -v "$WORK/k8s-vitd.json:/etc/vitd/vitd.json:ro" "$IMAGE" config \
    >"$WORK/k8s-config.out" 2>&1 || fail "vitd rejects the ConfigMap's vitd.json: $(tail -3 "$WORK/k8s-config.out")"
pass "Kubernetes manifests parse and agree: $figures"

say "all checks passed in $(($(date +%s) - T_START)) s"
echo "$PASSED passed, 0 failed"

#!/bin/sh
# Installs what vitd needs on Debian 12 / Ubuntu 24.04 (run as root, or with sudo).
#   docker/deps.sh            build + test dependencies (the README's commands and CI)
#   docker/deps.sh --build    build dependencies only (the Docker image's build stage and docker/base.sh)
# The CUDA toolkit and cuDNN are not Debian packages: install NVIDIA's (cuda-toolkit-13-0, libcudnn9-dev-cuda-13)
# for the GPU backend; without nvcc vitd builds its CPU backend only.
# Test-only: python3-torch runs the vLLM hand-over test's torch.load of vitd's answers (about 30 s to install);
# numpy and Pillow serve the fixture scripts and the Docker test.
set -eu
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
PKGS="build-essential cmake pkg-config libpng-dev zlib1g-dev libjpeg62-turbo-dev libstb-dev libcjson-dev
      libmicrohttpd-dev libopenblas-dev libssl-dev curl ca-certificates python3"
TEST_PKGS="python3-numpy python3-pil python3-torch"
case "${1:-}" in
"") PKGS="$PKGS $TEST_PKGS" ;;
--build) ;;
*) echo "deps.sh: unknown argument '$1' (use --build or nothing)" >&2; exit 2 ;;
esac
# Ubuntu names libjpeg-turbo's development package differently.
if ! apt-cache show libjpeg62-turbo-dev >/dev/null 2>&1; then
    PKGS=$(echo "$PKGS" | sed 's/libjpeg62-turbo-dev/libjpeg-turbo8-dev/')
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
echo "deps.sh: all vitd dependencies are installed"

#!/usr/bin/env bash
# base.sh — builds the local base images that stand in for NVIDIA's public CUDA images where no container
# registry can be reached: a Debian 12 (bookworm) root made with debootstrap from Debian's packages, finished in a
# chroot and `docker import`ed. Run as root on a Debian/Ubuntu host with a Docker daemon.
#
#   vitd-local/dev:bookworm       minbase + the build dependencies (docker/deps.sh): the Dockerfile's DEV_BASE
#   vitd-local/runtime:bookworm   minbase, trimmed (no docs, man pages, locales, apt lists): RUNTIME_BASE. The
#                                 image's build stage ships vitd's own shared libraries beside it, so the runtime
#                                 base needs only glibc and bash (for the health probe).
#   vitd-local/haproxy:bookworm   minbase + Debian's haproxy: the load balancer of compose.yaml.
#
# No CUDA here: the local images are CPU-only (the test machine has no GPU and a CUDA build in the image would need
# the 2.7 GB toolkit in the dev base and about 1.1 GB of cuBLASLt + cuDNN in the runtime base). Production images
# build on NVIDIA's bases instead (see docker/Dockerfile).
#
# Images are cached: one whose label vitd.recipe matches the hash of this script and docker/deps.sh is kept.
#   docker/base.sh            build what is missing or stale
#   docker/base.sh --force    rebuild all three
#   docker/base.sh --list     print the image names and exit
# Environment: VITD_DEBIAN_MIRROR (default http://deb.debian.org/debian), VITD_DEBIAN_SECURITY
# (default http://deb.debian.org/debian-security), VITD_BASE_WORK (scratch directory, default /var/tmp).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
MIRROR=${VITD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${VITD_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
DEV_IMAGE=vitd-local/dev:$SUITE
RUNTIME_IMAGE=vitd-local/runtime:$SUITE
LB_IMAGE=vitd-local/haproxy:$SUITE
RECIPE=$(cat "$HERE/base.sh" "$HERE/deps.sh" | sha256sum | cut -c1-16)

log() { echo "base.sh: $*" >&2; }
die() { echo "base.sh: error: $*" >&2; exit 1; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    --list) echo "$DEV_IMAGE $RUNTIME_IMAGE $LB_IMAGE"; exit 0 ;;
    "") ;;
    *) die "unknown argument '$1' (use --force or --list)" ;;
esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (docker/test.sh starts one)"

# Whether image $1 exists with the current recipe.
fresh() {
    [ "$force" = 0 ] || return 1
    local got
    got=$(docker image inspect -f '{{index .Config.Labels "vitd.recipe"}}' "$1" 2>/dev/null) || return 1
    [ "$got" = "$RECIPE" ]
}

todo=""
for img in "$DEV_IMAGE" "$RUNTIME_IMAGE" "$LB_IMAGE"; do
    if fresh "$img"; then log "$img is up to date (recipe $RECIPE)"; else todo="$todo $img"; fi
done
[ -n "$todo" ] || exit 0

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

WORK=$(mktemp -d "${VITD_BASE_WORK:-/var/tmp}/vitd-base.XXXXXX")
MOUNTED=""
cleanup() {
    for m in $MOUNTED; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- one minimal Debian root, shared by the three images ----
t0=$(date +%s)
log "debootstrap $SUITE (minbase) from $MIRROR into $WORK/minbase (a few minutes)"
debootstrap --variant=minbase --components=main "$SUITE" "$WORK/minbase" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
cat >"$WORK/minbase/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
# Keep apt lean in every image: no recommends, no suggestions.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$WORK/minbase/etc/apt/apt.conf.d/90vitd"
log "debootstrap done in $(($(date +%s) - t0)) s"

# Runs a command inside root $1 with /proc and /dev/pts mounted, host DNS and services kept from starting.
in_root() {
    local root=$1; shift
    mount -t proc proc "$root/proc"; MOUNTED="$root/proc $MOUNTED"
    mkdir -p "$root/dev/pts"
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"; MOUNTED="$root/dev/pts $MOUNTED"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
    local rc=0
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        DEBCONF_NOWARNINGS=yes LC_ALL=C HOME=/root "$@" || rc=$?
    rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
    umount "$root/dev/pts" "$root/proc"; MOUNTED=${MOUNTED#"$root/dev/pts $root/proc "}
    return $rc
}

# apt update + upgrade (security fixes) + install of the packages $2..., then clean.
install_pkgs() {
    local root=$1; shift
    in_root "$root" sh -ec 'apt-get update -qq; apt-get upgrade -y -qq >/dev/null;
        if [ $# -gt 0 ]; then apt-get install -y -qq "$@" >/dev/null; fi; apt-get clean' sh "$@"
}

# Removes what a runtime image never reads: docs, man pages, locales, apt lists, caches.
trim() {
    local root=$1
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
        "$root"/var/log/*.log "$root"/tmp/*
}

# Imports root $1 as image $2 with the recipe label and extra --change instructions $3...
import_root() {
    local root=$1 img=$2; shift 2
    local old
    old=$(docker image inspect -f '{{.Id}}' "$img" 2>/dev/null || true)
    local changes=(--change "LABEL vitd.recipe=$RECIPE" --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                   --change "ENV LANG=C.UTF-8")
    for c in "$@"; do changes+=(--change "$c"); done
    tar --numeric-owner -C "$root" -c . | docker import "${changes[@]}" - "$img" >/dev/null
    # The image it replaces, now untagged (kept if a container or image still uses it).
    [ -z "$old" ] || docker rmi "$old" >/dev/null 2>&1 || true
    log "imported $img ($(docker image inspect -f '{{.Size}}' "$img" | awk '{printf "%.0f MB", $1/1e6}'))"
}

for img in $todo; do
    t0=$(date +%s)
    root="$WORK/${img//[\/:]/_}"
    cp -a "$WORK/minbase" "$root"
    case "$img" in
    "$DEV_IMAGE")
        # The build dependencies, from the one list the README, CI and the image share.
        cp "$HERE/deps.sh" "$root/tmp/deps.sh"
        install_pkgs "$root"
        in_root "$root" sh /tmp/deps.sh --build >/dev/null
        in_root "$root" apt-get clean
        rm -f "$root/tmp/deps.sh"   # apt lists stay: deps.sh (run again by the Dockerfile) reads them
        import_root "$root" "$img" 'CMD ["/bin/bash"]'
        ;;
    "$RUNTIME_IMAGE")
        install_pkgs "$root"
        trim "$root"
        import_root "$root" "$img" 'CMD ["/bin/bash"]'
        ;;
    "$LB_IMAGE")
        install_pkgs "$root" haproxy
        trim "$root"
        import_root "$root" "$img" 'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
        ;;
    esac
    rm -rf --one-file-system "$root"
    log "$img built in $(($(date +%s) - t0)) s"
done

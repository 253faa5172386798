#!/usr/bin/env bash
# Builds the static flinger and nats-server binaries from this checkout and
# two images FROM scratch:
#
#   $FLINGER_IMAGE (flinger:dev)     flinger, with busybox as /bin/sh for test_cmds
#   $NATS_IMAGE    (flinger-nats:dev) nats-server, at the version go.mod pins
#
# Usage: deploy/images/build.sh [CONTEXT_DIR]
# The build contexts are prepared in CONTEXT_DIR (default: a temporary
# directory, removed afterwards). Needs Go, Docker and a static busybox
# ($BUSYBOX, default /bin/busybox: Debian's busybox-static package).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
GO="${GO:-go}"
FLINGER_IMAGE="${FLINGER_IMAGE:-flinger:dev}"
NATS_IMAGE="${NATS_IMAGE:-flinger-nats:dev}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"

if [ ! -x "$BUSYBOX" ]; then
  echo "build.sh: no busybox at $BUSYBOX (apt-get install busybox-static, or set BUSYBOX)" >&2
  exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  echo "build.sh: $BUSYBOX is linked dynamically; a FROM scratch image needs a static one (busybox-static)" >&2
  exit 1
fi

if [ $# -ge 1 ]; then
  ctx="$1"
  mkdir -p "$ctx"
else
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
fi
fl="$ctx/flinger"
nt="$ctx/nats"
rm -rf "$fl" "$nt"
mkdir -p "$fl/rootfs/bin" "$fl/rootfs/tmp" "$fl/rootfs/var/lib/flinger/runs" "$nt/rootfs/data/jetstream" "$nt/rootfs/tmp"
chmod 1777 "$fl/rootfs/tmp" "$nt/rootfs/tmp"

cd "$root"
CGO_ENABLED=0 "$GO" build -trimpath -o "$fl/flinger" ./cmd/flinger
CGO_ENABLED=0 "$GO" build -trimpath -o "$nt/nats-server" github.com/nats-io/nats-server/v2

cp "$BUSYBOX" "$fl/rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  case "$applet" in
    busybox | */*) ;;
    *) ln -sf busybox "$fl/rootfs/bin/$applet" ;;
  esac
done

# test_cmds given as a script without "#!" get "#!/bin/bash", as in
# Testflinger; busybox has no bash, so /bin/bash hands the script to
# busybox's ash (which takes [[ ]] and most of bash's everyday syntax).
rm -f "$fl/rootfs/bin/bash"
printf '#!/bin/sh\nexec /bin/sh "$@"\n' >"$fl/rootfs/bin/bash"
chmod 755 "$fl/rootfs/bin/bash"

cp deploy/images/flinger.Dockerfile "$fl/Dockerfile"
cp deploy/images/nats.Dockerfile "$nt/Dockerfile"
docker build -q -t "$FLINGER_IMAGE" "$fl"
docker build -q -t "$NATS_IMAGE" "$nt"
echo "built $FLINGER_IMAGE and $NATS_IMAGE"

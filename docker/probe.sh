#!/bin/bash
# vitd-probe [PATH] — the image's health probe: exits 0 when GET http://127.0.0.1:$VITD_PORT/PATH (default
# /health, port 8080) answers 200, 1 otherwise. Uses bash's /dev/tcp, so the runtime image needs no curl or wget.
# The port comes from VITD_PORT only: a port set in a config file or a flag needs VITD_PORT set to match.
path=${1:-/health}
exec 3<>"/dev/tcp/127.0.0.1/${VITD_PORT:-8080}" 2>/dev/null || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
read -r -t 5 _proto code _rest <&3 || exit 1
[ "$code" = 200 ]

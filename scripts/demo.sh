#!/usr/bin/env bash
# Sets up, builds and runs zerotel on this machine with live output, while a
# small loop generates activity:
#   [http]  spans of a sample Go HTTP service (two instances: /fanout calls the
#           other), traced with zero code changes by `zerotel run`
#   [tcp]   every TCP connection on the host, when it closes
#   [exec]  every process start on the host
# Stops after DURATION (default 30s) or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=$PATH:/usr/local/go/bin
DURATION=${DURATION:-30s}

make build
go build -o bin/httpserver ./testdata/httpserver
go build -o bin/httpclient ./testdata/httpclient

# The backend runs first; the front service is started by zerotel itself.
bin/httpserver -addr 127.0.0.1:18081 >/dev/null &
backend=$!
bin/zerotel run --duration "$DURATION" -- bin/httpserver -addr 127.0.0.1:18080 -backend http://127.0.0.1:18081 \
	2> >(grep -v "listening on" >&2) | sed -u 's/^/[http] /' &
bin/zerotel trace tcp --duration "$DURATION" | sed -u 's/^/[tcp]  /' &
bin/zerotel trace exec --duration "$DURATION" | sed -u 's/^/[exec] /' &
trap 'kill $(jobs -p) 2>/dev/null; wait' INT TERM EXIT
sleep 2

# Light load: a few requests a second, one of which fans out to the backend.
end=$((SECONDS + ${DURATION%s}))
i=0
while [ $SECONDS -lt $end ]; do
	i=$((i + 1))
	bin/httpclient GET "http://127.0.0.1:18080/users/$i" GET http://127.0.0.1:18080/fanout \
		POST http://127.0.0.1:18080/items "order $i" GET http://127.0.0.1:18080/nope >/dev/null || true
	sleep 1
done
kill "$backend" 2>/dev/null || true
wait

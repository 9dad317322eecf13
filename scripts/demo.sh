#!/usr/bin/env bash
# Sets up, builds and runs zerotel on this machine with live output: every
# process start and every TCP connection on the host, while a small loop
# generates some of both. Stops after DURATION (default 30s) or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=$PATH:/usr/local/go/bin
DURATION=${DURATION:-30s}

make build
go build -o bin/tcppeer ./testdata/tcppeer

bin/zerotel trace exec --duration "$DURATION" | sed -u 's/^/[exec] /' &
bin/zerotel trace tcp --duration "$DURATION" | sed -u 's/^/[tcp]  /' &
trap 'kill $(jobs -p) 2>/dev/null; wait' INT TERM
sleep 2

# Activity: a loopback exchange and a couple of short commands every second.
end=$((SECONDS + ${DURATION%s}))
while [ $SECONDS -lt $end ] && [ -n "$(jobs -rp)" ]; do
	bin/tcppeer server 127.0.0.1:0 300 4000 | {
		read -r listen
		bin/tcppeer client "${listen#listen=}" 300 4000 >/dev/null
		cat >/dev/null
	} || true
	ls / >/dev/null
	sleep 1
done
wait

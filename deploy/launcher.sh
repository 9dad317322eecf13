#!/usr/bin/env bash
# Writes goprof's launcher: `deploy/launcher.sh GOPROF DEST` makes DEST (setup.sh:
# /usr/local/bin/goprof) a small world-readable script that runs GOPROF (the checkout's
# .venv/bin/goprof) with its arguments.
#
# Why not a symlink: a checkout other users cannot read (a clone under /root, mode 0700)
# gave them "python3: can't open file '.../.venv/bin/goprof': Permission denied". The
# launcher lives outside the checkout, so it always runs; when it cannot reach goprof it
# says what goprof itself would say to a user without root (the same line, exit code 2),
# or, for a user who has goprof's capabilities, that the code is unreadable.
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 GOPROF DEST" >&2; exit 2; }
target=$1 dest=$2
case $target in /*) ;; *) echo "launcher: GOPROF must be an absolute path: $target" >&2; exit 2;; esac

# The path as one single-quoted sh word ('\'' for each quote in it).
q="'${target//\'/\'\\\'\'}'"
tmp=$(mktemp "$dest.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<EOF
#!/bin/sh
# goprof's launcher, written by deploy/launcher.sh (make setup): runs the goprof below.
goprof=$q
if [ -r "\$goprof" ]; then exec "\$goprof" "\$@"; fi
# It cannot be read by this user (a checkout in a folder only root may enter). Without
# root, goprof would refuse to run anyway: say so in its words (goprof.targets.
# check_privileges) unless this process has CAP_BPF (39) and CAP_PERFMON (38).
caps=\$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/\$\$/status 2>/dev/null)
if [ "\$(id -u)" != 0 ] && [ \$(( 0x\${caps:-0} >> 38 & 3 )) != 3 ]; then
  echo "goprof: goprof loads eBPF programs: run it as root (sudo goprof ...) or give it CAP_BPF and CAP_PERFMON" >&2
else
  echo "goprof: cannot read \$goprof (the goprof make setup installed): it is gone, or its folder is closed to this process" >&2
fi
exit 2
EOF
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT

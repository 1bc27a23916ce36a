#!/usr/bin/env bash
# Checkpoint a counting process, show it is gone, restore it, and show that
# it goes on counting from where it was.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -t 1 ]; then
    B=$'\e[1m' G=$'\e[32m' D=$'\e[2m' R=$'\e[0m'
else
    B='' G='' D='' R=''
fi
step() { printf '\n%s==>%s %s%s%s\n' "$G" "$R" "$B" "$*" "$R"; }
say() { printf '    %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh needs root: criu-helper is not installed setuid yet. Run: sudo $0" >&2
    exit 1
fi
for tool in cargo python3; do
    command -v "$tool" >/dev/null || { echo "demo.sh needs $tool" >&2; exit 1; }
done

step "Building criu and criu-helper (release)"
cargo build --release --workspace --bins --quiet
bin="${CARGO_TARGET_DIR:-target}/release"
criu="$bin/criu"

tmp=$(mktemp -d /tmp/criu-demo.XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
mkdir "$tmp/images"
count="$tmp/count.txt"

step "Starting a counter: a python3 process appending 1, 2, 3, ... to a file every 0.2 s"
# One process, no children, its own session, stdio on /dev/null and no other
# inherited descriptors (pipes other than stdio cannot be dumped yet).
setsid python3 -c '
import os, sys, time
os.closerange(3, 65536)
with open(sys.argv[2], "w") as f:
    f.write(str(os.getpid()))
i = 0
while True:
    i += 1
    with open(sys.argv[1], "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.2)
' "$count" "$tmp/pid" </dev/null >/dev/null 2>&1 &
disown
for _ in $(seq 100); do [ -s "$tmp/pid" ] && break; sleep 0.1; done
pid=$(cat "$tmp/pid")
say "pid $pid"
for _ in 1 2 3; do
    sleep 0.6
    say "counter: $(tail -n1 "$count")"
done

step "criu dump -t $pid -D $tmp/images"
"$criu" dump -t "$pid" -D "$tmp/images" -o dump.log -v4
last=$(tail -n1 "$count")
say "dumped at counter $last; images:"
(cd "$tmp/images" && ls -sh ./*.img | sed "s|\./||; s|^|    $D|; s|\$|$R|")
for _ in $(seq 50); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
if [ -e "/proc/$pid" ]; then
    say "pid $pid is still there?!"
    exit 1
fi
say "pid $pid is gone"
sleep 1
say "one second later the file still ends at: $(tail -n1 "$count")"

step "criu restore -d -D $tmp/images"
"$criu" restore -d -D "$tmp/images" -o restore.log -v4
say "pid $pid is back ($(cat "/proc/$pid/comm"), state $(awk '{ print $3 }' "/proc/$pid/stat"))"
for _ in 1 2 3; do
    sleep 0.6
    say "counter: $(tail -n1 "$count")"
done
first=$(awk -v last="$last" 'NR == last + 1 { print; exit }' "$count")
if [ "$first" = "$((last + 1))" ]; then
    printf '\n%s%s    It went on from %s to %s, not from 1.%s\n' "$G" "$B" "$last" "$first" "$R"
else
    printf '\n    After %s the file continues with "%s" (expected %s)\n' "$last" "$first" "$((last + 1))"
    exit 1
fi

step "Cleaning up"
kill -9 "$pid"
say "killed pid $pid, removed $tmp"

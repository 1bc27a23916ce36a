#!/usr/bin/env bash
# Builds release binaries and installs them:
#   $DESTDIR$PREFIX/bin/criu                      0755
#   $DESTDIR$PREFIX/libexec/criu/criu-helper      root:root 4755 (setuid root)
#
# Usage: scripts/install.sh [PREFIX] [DESTDIR]     (PREFIX defaults to /usr/local;
#        DESTDIR may also come from the environment, the argument wins)
#        scripts/install.sh --uninstall [PREFIX] [DESTDIR]
#
# The helper's final path ($PREFIX/libexec/criu/criu-helper, without DESTDIR)
# is compiled into criu, which also finds it at ../libexec/criu/criu-helper
# relative to itself. Run as root to make the helper setuid root; otherwise
# the files are installed without it and the commands an administrator must
# run are printed. Read SECURITY.md before installing on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."

uninstall=0
if [ "${1:-}" = "--uninstall" ]; then
    uninstall=1
    shift
fi
PREFIX="${1:-/usr/local}"
DESTDIR="${2:-${DESTDIR:-}}"
case "$PREFIX" in
/*) ;;
*)
    echo "install.sh: PREFIX must be an absolute path, not '$PREFIX'" >&2
    exit 2
    ;;
esac
bin_dir="$DESTDIR$PREFIX/bin"
helper_dir="$DESTDIR$PREFIX/libexec/criu"

if [ "$uninstall" = 1 ]; then
    rm -f "$bin_dir/criu" "$helper_dir/criu-helper"
    rmdir "$helper_dir" 2>/dev/null || true
    echo "removed $bin_dir/criu and $helper_dir/criu-helper"
    exit 0
fi

CRIU_HELPER_PATH="$PREFIX/libexec/criu/criu-helper" \
    cargo build --release --workspace --bins

install -d -m 0755 "$bin_dir" "$helper_dir"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/criu" "$bin_dir/criu"
# Install under a temporary name and rename, so a running criu never sees
# a half-written or not-yet-setuid helper.
tmp="$helper_dir/.criu-helper.new"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/criu-helper" "$tmp"
if [ "$(id -u)" = 0 ]; then
    chown root:root "$tmp"
    chmod 4755 "$tmp"
    mv -f "$tmp" "$helper_dir/criu-helper"
    echo "installed $bin_dir/criu and $helper_dir/criu-helper (root:root, mode 4755: setuid mode)"
else
    mv -f "$tmp" "$helper_dir/criu-helper"
    echo "installed $bin_dir/criu and $helper_dir/criu-helper (NOT setuid: not run as root)"
    echo "For ordinary users to checkpoint their own processes, an administrator runs:"
    echo "    chown root:root '$helper_dir/criu-helper' && chmod 4755 '$helper_dir/criu-helper'"
fi

#!/usr/bin/env bash
# Installs orchd and orchctl plus the matching systemd unit.
#
#   packaging/install.sh --system [--prefix /usr/local] [--enable]
#   packaging/install.sh --user   [--prefix ~/.local]   [--enable]
#
# --system  binaries to PREFIX/bin (default /usr/local), systemd/orchd.service
#           and orchd.socket to /etc/systemd/system/, group `orch` made if
#           missing. Needs root.
# --user    binaries to PREFIX/bin (default ~/.local), systemd/orchd-user.service
#           to ${XDG_CONFIG_HOME:-~/.config}/systemd/user/orchd.service.
# --enable  also `systemctl enable --now orchd.socket` (--user: orchd).
# --bin-dir DIR  where the built binaries are (default: target/release; build
#           them first with `cargo build --release --locked`).
# DESTDIR=/some/root stages everything below that directory (for packagers);
# systemctl is then not called.
#
# The unit's ExecStart is rewritten to PREFIX/bin/orchd. Nothing else is
# changed: the config file is optional (see docs/configuration.md).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mode=""
prefix=""
enable=0
bin_dir="$root/target/release"
destdir=${DESTDIR:-}

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --system) mode=system ;;
        --user) mode=user ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift ;;
        --enable) enable=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ -n $mode ]] || die "say --system or --user (see --help)"

for b in orchd orchctl; do
    [[ -x $bin_dir/$b ]] || die "$bin_dir/$b not found: run \`cargo build --release --locked\` first, or pass --bin-dir"
done

if [[ $mode == system ]]; then
    prefix=${prefix:-/usr/local}
    unit_src="$root/systemd/orchd.service"
    unit_dst="/etc/systemd/system/orchd.service"
    systemctl=(systemctl)
    if [[ -z $destdir && $(id -u) -ne 0 ]]; then
        die "--system needs root (or DESTDIR for staging)"
    fi
else
    prefix=${prefix:-$HOME/.local}
    unit_src="$root/systemd/orchd-user.service"
    unit_dst="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/orchd.service"
    systemctl=(systemctl --user)
fi

install -d -m 0755 "$destdir$prefix/bin"
install -m 0755 "$bin_dir/orchd" "$bin_dir/orchctl" "$destdir$prefix/bin/"
echo "installed $destdir$prefix/bin/orchd and $destdir$prefix/bin/orchctl"

install -d -m 0755 "$destdir$(dirname "$unit_dst")"
sed "s|^ExecStart=/usr/bin/orchd|ExecStart=$prefix/bin/orchd|" "$unit_src" >"$destdir$unit_dst.tmp"
chmod 0644 "$destdir$unit_dst.tmp"
mv "$destdir$unit_dst.tmp" "$destdir$unit_dst"
echo "installed $destdir$unit_dst (ExecStart=$prefix/bin/orchd)"
if [[ $mode == system ]]; then
    install -m 0644 "$root/systemd/orchd.socket" "$destdir/etc/systemd/system/orchd.socket"
    echo "installed $destdir/etc/systemd/system/orchd.socket"
    if [[ -z $destdir ]] && ! getent group orch >/dev/null; then
        groupadd --system orch
        echo "made group orch (its members may use the system daemon)"
    fi
fi

if [[ -n $destdir ]]; then
    exit 0
fi
if [[ ! -d /run/systemd/system ]]; then
    echo "systemd is not running here: start orchd by hand ($prefix/bin/orchd)"
    exit 0
fi
"${systemctl[@]}" daemon-reload
unit=orchd.service
[[ $mode == system ]] && unit=orchd.socket
if [[ $enable -eq 1 ]]; then
    "${systemctl[@]}" enable --now "$unit"
    "${systemctl[@]}" --no-pager status "$unit" || true
else
    echo "next: ${systemctl[*]} enable --now $unit"
fi

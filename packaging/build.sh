#!/usr/bin/env bash
# Builds the orch packages:
#   target/packages/orch_<version>_amd64.deb      (dpkg-deb; checked with lintian)
#   target/packages/orch-<version>-1.x86_64.rpm   (cargo-generate-rpm)
#
#   packaging/build.sh [--no-build] [--no-rpm] [--no-deb] [--no-lintian] [--version V]
#
# --no-build    use the binaries already in target/release
# --no-rpm      build only the .deb
# --no-deb      build only the .rpm
# --no-lintian  do not run lintian on the .deb
# --bin-dir DIR take orchd and orchctl from DIR (implies --no-build)
# --version V   the packages' version instead of Cargo.toml's (e.g. 0.1.0+rebuild1, for
#               an upgrade test with the same binaries; the .deb's changelog gains an entry)
# ORCH_RPM_COMPRESS: the rpm's payload compression (default zstd; none for a quick test build).
# Installs what it needs (dpkg-dev, lintian, rpm tooling via cargo install) when missing;
# needs root for apt-get then.
#
# Contents (both packages): stripped orchd and orchctl in /usr/bin; orchd.service,
# orchd.socket (system) and orchd.service (user) units; sysusers.d entry for group orch;
# /etc/orch/orchd.toml (a config file, every default commented); man pages orchctl(1) and
# one per subcommand, orchd(8), orchd.toml(5); bash, zsh and fish completions; the docs
# and example profiles in /usr/share/doc/orch.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=1 rpm=1 want_deb=1 lint=1 bin_dir="" version_override=""
while [[ $# -gt 0 ]]; do
    a=$1; shift
    case $a in
        --bin-dir) bin_dir=${1:?--bin-dir needs a directory}; shift; build=0 ;;
        --no-build) build=0 ;;
        --version) version_override=${1:?--version needs a version}; shift ;;
        --no-rpm) rpm=0 ;;
        --no-deb) want_deb=0 lint=0 ;;
        --no-lintian) lint=0 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done
say() { printf '[build.sh] %s\n' "$*" >&2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }
if [[ -n $version_override ]]; then
    # Debian and rpm both accept these characters in an upstream version (rpm: no '-').
    [[ $version_override =~ ^[0-9][0-9A-Za-z.+~]*$ ]] \
        || { echo "build.sh: --version '$version_override' is not a version (digits first, then [0-9A-Za-z.+~])" >&2; exit 2; }
    version=$version_override
fi
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
out=${CARGO_TARGET_DIR:-$root/target}
bin=${bin_dir:-$out/release}
pkgs=$out/packages
stage=$pkgs/stage

need_apt() { # need_apt COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    say "installing $2 (for $1)"
    [[ $(id -u) == 0 ]] || { echo "build.sh: $1 is missing; apt-get install $2 (as root)" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
need_apt dpkg-deb dpkg
need_apt dpkg-shlibdeps dpkg-dev
need_apt strip binutils
[[ $lint == 1 ]] && need_apt lintian lintian

if [[ $build == 1 ]]; then
    say "cargo build --release"
    cargo build --release --locked --bin orchd --bin orchctl
fi
for b in orchd orchctl; do
    [[ -x $bin/$b ]] || { echo "build.sh: $bin/$b is missing (cargo build --release)" >&2; exit 1; }
done

# ---------------------------------------------------------------- the tree
rm -rf "$stage"
mkdir -p "$stage"
d() { install -d -m 0755 "$stage/$1"; }
f() { install -D -m "${3:-0644}" "$1" "$stage/$2"; }

d usr/bin
for b in orchd orchctl; do
    strip --strip-unneeded --remove-section=.comment --remove-section=.note -o "$stage/usr/bin/$b" "$bin/$b"
    chmod 0755 "$stage/usr/bin/$b"
done

# Units: Debian's system units live in /lib (bookworm), the rpm's in /usr/lib.
f systemd/orchd.service lib/systemd/system/orchd.service
f systemd/orchd.socket lib/systemd/system/orchd.socket
f systemd/orchd-user.service usr/lib/systemd/user/orchd.service
printf '# The group whose members may use the system orchd (its socket is root:orch 0660).\ng orch - -\n' \
    > "$pkgs/orch.sysusers"
f "$pkgs/orch.sysusers" usr/lib/sysusers.d/orch.conf

# The config file: every default, commented (as root reads them: the system paths).
{
    echo "# orchd's configuration (the system daemon). Every setting below is shown with its"
    echo "# default, commented out: uncomment and change what you need, then"
    echo "#   systemctl reload orchd   (or: orchctl daemon reload)"
    echo "# Reference: orchd.toml(5), /usr/share/doc/orch/configuration.md;"
    echo "# agent profiles for Claude Code, Codex and aider: /usr/share/doc/orch/examples/agents.toml"
    echo
    "$bin/orchd" --config /dev/null --print-config \
        | sed -e 's/^max_parallel = .*/max_parallel = 0  # 0 or unset: the number of CPUs/' \
              -e 's/^\(socket\|state_dir\) = .*/&/' \
        | sed -e '/^$/!s/^/# /'
} > "$pkgs/orchd.toml"
grep -q '^# max_parallel' "$pkgs/orchd.toml" || { echo "build.sh: the config file lacks max_parallel" >&2; exit 1; }
f "$pkgs/orchd.toml" etc/orch/orchd.toml

# Man pages, from the clap definitions and the config reference.
man=$pkgs/man
rm -rf "$man"
ORCH_GENERATE_MAN=$man "$bin/orchctl" >/dev/null
ORCH_GENERATE_MAN=$man ORCH_CONFIG_REFERENCE=docs/configuration.md "$bin/orchd"
for page in "$man"/*; do
    sec=${page##*.}
    d "usr/share/man/man$sec"
    gzip -9n -c "$page" > "$stage/usr/share/man/man$sec/$(basename "$page").gz"
    chmod 0644 "$stage/usr/share/man/man$sec/$(basename "$page").gz"
done

# Completions, in the shells' vendor directories.
d usr/share/bash-completion/completions
d usr/share/zsh/vendor-completions
d usr/share/fish/vendor_completions.d
"$bin/orchctl" completions bash > "$stage/usr/share/bash-completion/completions/orchctl"
"$bin/orchctl" completions zsh > "$stage/usr/share/zsh/vendor-completions/_orchctl"
"$bin/orchctl" completions fish > "$stage/usr/share/fish/vendor_completions.d/orchctl.fish"
chmod 0644 "$stage"/usr/share/bash-completion/completions/orchctl \
    "$stage"/usr/share/zsh/vendor-completions/_orchctl "$stage"/usr/share/fish/vendor_completions.d/orchctl.fish

# Docs and example profiles.
doc=usr/share/doc/orch
d "$doc"
f README.md "$doc/README.md"
for m in docs/*.md; do f "$m" "$doc/$(basename "$m")"; done
for e in docs/examples/*; do f "$e" "$doc/examples/$(basename "$e")"; done
f packaging/deb/copyright "$doc/copyright"
# Compressed as Debian policy asks of docs over 4 KiB (README.md too).
find "$stage/$doc" -name '*.md' -size +4k -exec gzip -9n {} +

# ---------------------------------------------------------------- .deb
if [[ $want_deb == 1 ]]; then
    say "building the .deb"
    deb_root=$pkgs/deb-root
    rm -rf "$deb_root"
    cp -a "$stage" "$deb_root"
    {
        if ! head -n1 packaging/deb/changelog | grep -qF "orch ($version-1)"; then
            # A version given with --version: its own entry on top, as dch would write it.
            printf 'orch (%s-1) unstable; urgency=medium\n\n  * Rebuild of the same sources as %s.\n\n -- %s  %s\n\n' \
                "$version" "$cargo_version" "$(sed -n 's/^ -- \(.*>\)  .*/\1/p' packaging/deb/changelog | head -n1)" \
                "$(date -R -u)"
        fi
        cat packaging/deb/changelog
    } | gzip -9n > "$deb_root/$doc/changelog.Debian.gz"
    chmod 0644 "$deb_root/$doc/changelog.Debian.gz"
    install -d -m 0755 "$deb_root/usr/share/lintian/overrides"
    install -m 0644 packaging/deb/lintian-overrides "$deb_root/usr/share/lintian/overrides/orch"
    install -d -m 0755 "$deb_root/DEBIAN"
    for s in postinst prerm postrm; do install -m 0755 "packaging/deb/$s" "$deb_root/DEBIAN/$s"; done
    echo /etc/orch/orchd.toml > "$deb_root/DEBIAN/conffiles"
    chmod 0644 "$deb_root/DEBIAN/conffiles"
    # Shared-library dependencies, as dpkg-shlibdeps finds them.
    shl=$(mktemp -d)
    mkdir -p "$shl/debian"
    printf 'Source: orch\n\nPackage: orch\nArchitecture: amd64\n' > "$shl/debian/control"
    shlibs=$(cd "$shl" && dpkg-shlibdeps -O "$deb_root/usr/bin/orchd" "$deb_root/usr/bin/orchctl" 2>/dev/null \
        | sed -n 's/^shlibs:Depends=//p')
    rm -rf "$shl"
    [[ -n $shlibs ]] || shlibs="libc6"
    installed=$(du -k -s --exclude=DEBIAN "$deb_root" | cut -f1)
    sed -e "s/@VERSION@/$version-1/" -e "s/@DEPENDS@/$shlibs/" -e "s/@SIZE@/$installed/" \
        packaging/deb/control > "$deb_root/DEBIAN/control"
    (cd "$deb_root" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z \
        | xargs -0 md5sum | sed 's| \./| |') > "$deb_root/DEBIAN/md5sums"
    chmod 0644 "$deb_root/DEBIAN/control" "$deb_root/DEBIAN/md5sums"
    deb=$pkgs/orch_${version}_amd64.deb
    dpkg-deb --root-owner-group -Zxz --build "$deb_root" "$deb" >/dev/null
    say "built $deb ($(du -h "$deb" | cut -f1))"

    if [[ $lint == 1 ]]; then
        say "lintian"
        # Errors and warnings fail the build; the overrides in the package say why they exist.
        lintian --fail-on error,warning --suppress-tags-from-file /dev/null "$deb" | tee "$pkgs/lintian.txt"
    fi
fi

# ---------------------------------------------------------------- .rpm
if [[ $rpm == 1 ]]; then
    if ! command -v cargo-generate-rpm >/dev/null; then
        say "cargo install cargo-generate-rpm"
        cargo install --locked cargo-generate-rpm
    fi
    say "building the .rpm"
    # The rpm's system units live in /usr/lib/systemd/system.
    rpm_root=$pkgs/rpm-root
    rm -rf "$rpm_root"
    cp -a "$stage" "$rpm_root"
    mkdir -p "$rpm_root/usr/lib/systemd/system"
    mv "$rpm_root"/lib/systemd/system/* "$rpm_root/usr/lib/systemd/system/"
    rm -rf "$rpm_root/lib"
    # cargo-generate-rpm reads ./Cargo.toml and wants its [package.metadata.generate-rpm]
    # there: a manifest of its own (every asset an absolute path into the staged tree)
    # keeps the crate's Cargo.toml free of packaging details.
    rpm_manifest=$pkgs/rpm-manifest
    rm -rf "$rpm_manifest"
    mkdir -p "$rpm_manifest"
    {
        printf '[package]\nname = "orch"\nversion = "%s"\nedition = "2021"\n\n' "$cargo_version"
        sed -e "s|@ROOT@|$rpm_root|g" -e "s|@VERSION@|$version|g" packaging/rpm/metadata.toml
    } > "$rpm_manifest/Cargo.toml"
    (cd "$rpm_manifest" && cargo generate-rpm --target-dir "$out" -o "$pkgs/orch-$version-1.x86_64.rpm" \
        --payload-compress "${ORCH_RPM_COMPRESS:-zstd}")
    say "built $pkgs/orch-$version-1.x86_64.rpm ($(du -h "$pkgs/orch-$version-1.x86_64.rpm" | cut -f1))"
fi
ls -l "$pkgs"/*.deb "$pkgs"/*.rpm 2>/dev/null || true

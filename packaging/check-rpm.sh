#!/usr/bin/env bash
# Checks the built rpm without a Fedora machine: its header (name, version, arch,
# requires), its file list and config files, its scriptlets (syntax, and that an upgrade
# reloads orchd and never restarts it), then installs it into a throwaway rpm root
# (`rpm --root DIR`, no scriptlets: the root has no shell or systemd), verifies the
# installed files (`rpm -V`), runs the installed binaries, upgrades it to a rebuild with a
# higher version (the config file kept as edited) and erases it (nothing left).
#
#   packaging/check-rpm.sh [RPM]   (default: target/packages/orch-<version>-1.x86_64.rpm)
#
# Builds the upgrade rpm with packaging/build.sh --no-build --version V (the binaries in
# target/release must exist). Needs rpm (apt-get install rpm; installed when missing as
# root). Exit 0 when every check passed, 1 with the failed ones listed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${CARGO_TARGET_DIR:-$root/target}
case "$out" in /*) ;; *) out=$root/$out;; esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
pkg=${1:-$out/packages/orch-$version-1.x86_64.rpm}
[[ -f $pkg ]] || { echo "check-rpm: no $pkg (packaging/build.sh)" >&2; exit 1; }
if ! command -v rpm >/dev/null; then
    [[ $(id -u) == 0 ]] || { echo "check-rpm: rpm is missing; apt-get install rpm (as root)" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rpm >/dev/null
fi

failed=()
fail() { echo "check-rpm: FAIL: $*" >&2; failed+=("$*"); }
ok() { echo "check-rpm: ok: $*"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/orch-check-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- header
nvra=$(rpm -qp --qf '%{NAME} %{VERSION} %{RELEASE} %{ARCH}' "$pkg")
[[ $nvra == "orch $version 1 x86_64" ]] && ok "header: $nvra" || fail "header is '$nvra', not 'orch $version 1 x86_64'"
rpm -qp --requires "$pkg" | grep -q '^systemd' && ok "requires systemd" || fail "does not require systemd"

# ---------------------------------------------------------------- files
rpm -qlp "$pkg" > "$work/files"
for f in /usr/bin/orchd /usr/bin/orchctl \
    /usr/lib/systemd/system/orchd.service /usr/lib/systemd/system/orchd.socket \
    /usr/lib/systemd/user/orchd.service /usr/lib/sysusers.d/orch.conf /etc/orch/orchd.toml \
    /usr/share/man/man1/orchctl.1.gz /usr/share/man/man1/orchctl-submit.1.gz \
    /usr/share/man/man8/orchd.8.gz /usr/share/man/man5/orchd.toml.5.gz \
    /usr/share/bash-completion/completions/orchctl /usr/share/zsh/site-functions/_orchctl \
    /usr/share/fish/vendor_completions.d/orchctl.fish \
    /usr/share/doc/orch/README.md.gz /usr/share/doc/orch/operating.md.gz; do
    grep -qxF "$f" "$work/files" || fail "$f is not in the package"
done
grep -q '^/lib/' "$work/files" && fail "files under /lib (the rpm's units belong in /usr/lib)"
ok "$(wc -l < "$work/files") files listed"
[[ $(rpm -qp --configfiles "$pkg") == /etc/orch/orchd.toml ]] \
    && ok "config files: /etc/orch/orchd.toml" || fail "config files: $(rpm -qp --configfiles "$pkg" | tr '\n' ' ')"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$pkg" | grep -q '^cn /etc/orch/orchd.toml$' \
    && ok "orchd.toml is %config(noreplace)" || fail "orchd.toml is not %config(noreplace)"

# ---------------------------------------------------------------- scriptlets
rpm -qp --scripts "$pkg" > "$work/scripts"
# rpm prints each as "NAME scriptlet:" (or "NAME scriptlet (using INTERPRETER):"), then
# its body.
awk -v dir="$work" '/^[a-z]+ scriptlet( \(using [^)]*\))?:$/ {f=dir "/s-" $1; next} f {print > f}' "$work/scripts"
for s in preinstall postinstall preuninstall postuninstall; do
    if [[ ! -s $work/s-$s ]]; then fail "no $s scriptlet"; continue; fi
    sh -n "$work/s-$s" || fail "the $s scriptlet does not parse"
done
grep -q 'groupadd -r orch' "$work/s-preinstall" && ok "preinstall makes group orch" || fail "preinstall makes no group orch"
grep -q 'systemctl reload orchd' "$work/s-postuninstall" && ok "an upgrade reloads orchd" || fail "postuninstall does not reload orchd"
grep -qw restart "$work/scripts" && fail "a scriptlet restarts something: $(grep -w restart "$work/scripts")"
grep -q '\$1 -eq 0' "$work/s-preuninstall" && ok "only an erase stops orchd" || fail "preuninstall stops orchd on upgrade too"

# ---------------------------------------------------------------- install, upgrade, erase
db=$work/root
mkdir -p "$db"
rpm --root "$db" --initdb
if rpm --root "$db" -i --nodeps --noscripts "$pkg" 2> "$work/install.err"; then
    ok "installed into a throwaway root"
else
    fail "rpm -i: $(cat "$work/install.err")"
fi
rpm --root "$db" -V --nodeps orch > "$work/verify" 2>&1 && ok "rpm -V: the installed files match" || fail "rpm -V: $(cat "$work/verify")"
[[ $(stat -c %a "$db/usr/bin/orchd") == 755 ]] || fail "orchd is mode $(stat -c %a "$db/usr/bin/orchd")"
got=$("$db/usr/bin/orchd" --version 2>&1) && [[ $got == "orchd $version" ]] \
    && ok "the installed orchd runs: $got" || fail "the installed orchd --version: $got"
got=$("$db/usr/bin/orchctl" --version 2>&1) && [[ $got == "orchctl $version" ]] \
    && ok "the installed orchctl runs: $got" || fail "the installed orchctl --version: $got"
grep -q '^ExecStart=/usr/bin/orchd$' "$db/usr/lib/systemd/system/orchd.service" || fail "the system unit does not run /usr/bin/orchd"
installed_kib=$(du -sk "$db/usr" "$db/etc" | awk '{s+=$1} END {print s}')
ok "installed size $installed_kib KiB"

# An upgrade to a rebuild with a higher version keeps an edited config file.
up_version=$version+rpmupgrade1
ORCH_RPM_COMPRESS=none "$root/packaging/build.sh" --no-build --no-deb --version "$up_version" >/dev/null 2>"$work/build.err" \
    || fail "build.sh --version $up_version: $(tail -n 3 "$work/build.err")"
up=$out/packages/orch-$up_version-1.x86_64.rpm
echo 'max_parallel = 3' >> "$db/etc/orch/orchd.toml"
if rpm --root "$db" -U --nodeps --noscripts "$up" 2> "$work/upgrade.err"; then
    [[ $(rpm --root "$db" -q --qf '%{VERSION}' orch) == "$up_version" ]] && ok "upgraded to $up_version" \
        || fail "after rpm -U the version is $(rpm --root "$db" -q --qf '%{VERSION}' orch)"
    grep -qx 'max_parallel = 3' "$db/etc/orch/orchd.toml" && ok "the edited config survived the upgrade" \
        || fail "the upgrade replaced the edited /etc/orch/orchd.toml"
else
    fail "rpm -U: $(cat "$work/upgrade.err")"
fi
rm -f "$up"

rpm --root "$db" -e --nodeps --noscripts orch 2> "$work/erase.err" || fail "rpm -e: $(cat "$work/erase.err")"
left=$(cd "$db" && find usr etc -type f 2>/dev/null | grep -v '^etc/orch/orchd.toml.rpmsave$' || true)
[[ -z $left ]] && ok "erased: no file left (the edited config kept as .rpmsave)" || fail "files left after rpm -e: $left"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "check-rpm: ${#failed[@]} check(s) failed" >&2
    exit 1
fi
echo "check-rpm: all checks passed ($(basename "$pkg"), $(du -h "$pkg" | cut -f1))"

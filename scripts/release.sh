#!/usr/bin/env bash
# Release artifacts for x86_64 Linux: a self-contained `watcher` binary (the kernel programs are
# embedded with include_bytes_aligned!, see watcher/src/sensor/load.rs), a tarball with its
# sha256, a .deb, and SHA256SUMS.
#
#   scripts/release.sh [--out DIR] [--binary FILE]
#
#   --out DIR      where to write the artifacts (default: target/dist)
#   --binary FILE  package this already built binary instead of running
#                  `cargo build --release -p watcher --bin watcher` (the tests reuse
#                  target/release/watcher this way)
#
# Writes, for VERSION from Cargo.toml:
#   watcher-VERSION-x86_64-linux-gnu.tar.gz          watcher, README.md, BUILDINFO, policies/,
#                                                     dist/ (daemon.yaml, watcher.service),
#                                                     ci/ (the CI integration scripts)
#   watcher-VERSION-x86_64-linux-gnu.tar.gz.sha256   `sha256sum` format
#   watcher_VERSION_amd64.deb                        /usr/bin/watcher, the systemd unit, the
#                                                     example configuration, policies, completions,
#                                                     man page
#   watcher-ci.sh, watcher-step.sh                   the CI core script and the Jenkins wrapper
#                                                     (the GitLab include and Jenkins fetch them)
#   SHA256SUMS                                       every file above
#
# The binary needs glibc >= the version BUILDINFO names (the newest GLIBC_ symbol version it
# imports; the .deb's Depends says the same) and a kernel as README "Kernel requirements"
# describes (Linux >= 5.8, cgroup v2; BTF optional); `watcher drill` checks a machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

out=target/dist
binary=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --binary) binary=${2:?--binary needs a file}; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "release.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "release.sh: $*" >&2; exit 1; }
for tool in dpkg-deb sha256sum tar gzip objdump; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: dpkg, coreutils, tar, gzip, binutils)"
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
repository=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml [workspace.package]"
[ -n "$repository" ] || die "no repository in Cargo.toml [workspace.package]"
# The CI integrations name the release they install and the project's URL: both must be
# this release's (Cargo.toml is the one place they are decided).
grep -q "^    default: \"$version\"$" action.yml || die "action.yml: the version input's default is not $version"
for f in dist/ci/gitlab/watcher.gitlab-ci.yml dist/ci/jenkins/watcher-step.sh; do
  grep -q "${repository}/releases/download/v" "$f" || die "$f: its release URL is not ${repository}/releases/..."
  if grep -o 'https://github.com/[^/]*/[^/]*/releases' "$f" | grep -v -q "^${repository}/releases$"; then
    die "$f names another repository's releases than $repository"
  fi
  grep -q "$version" "$f" || die "$f: does not name version $version"
done

if [ -z "$binary" ]; then
  [ "${AYA_BUILD_SKIP:-}" = "" ] || die "AYA_BUILD_SKIP is set: that build has no kernel programs"
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release -p watcher --bin watcher
  binary=target/release/watcher
fi
[ -x "$binary" ] || die "$binary is not an executable"

# The binary must say its version and commit, and carry the kernel object (an
# AYA_BUILD_SKIP=1 build has an empty one and cannot watch anything).
vline=$("$binary" --version) || die "$binary --version failed"
case "$vline" in
  "watcher $version (commit "*")") ;;
  *) die "$binary --version printed '$vline', expected 'watcher $version (commit ...)'" ;;
esac
commit=${vline##*commit }; commit=${commit%)}
# The embedded object is an ELF for the BPF machine (e_machine 247): its section names are in
# the binary. An AYA_BUILD_SKIP build has none of them.
grep -aq 'cgroup_skb/egress' "$binary" || die "$binary has no embedded kernel programs (built with AYA_BUILD_SKIP=1?)"
# Self-contained: only the C library (and libgcc_s/libm, part of every glibc system).
if ldd "$binary" 2>/dev/null | grep -v -E 'linux-vdso|ld-linux|libc\.so|libm\.so|libgcc_s\.so' | grep -q '=>'; then
  die "$binary links libraries other than glibc and libgcc_s: $(ldd "$binary")"
fi
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
[ -n "$glibc" ] || die "cannot tell which glibc $binary needs"

name="watcher-$version-x86_64-linux-gnu"
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/watcher-release.XXXXXX")
trap 'rm -rf "$stage"' EXIT

buildinfo="watcher $version
commit $commit
target x86_64-unknown-linux-gnu
glibc >= $glibc (the newest GLIBC_ symbol version the binary imports)
kernel Linux >= 5.8, x86_64, cgroup v2, tracefs (BTF optional: shell identity); see README \"Kernel requirements\"; check a machine with: sudo watcher drill
home $repository"

# ---------------------------------------------------------------- tarball
t="$stage/$name"
mkdir -p "$t/dist" "$t/policies" "$t/ci"
install -m 0755 "$binary" "$t/watcher"
install -m 0644 README.md "$t/README.md"
install -m 0644 dist/daemon.yaml dist/watcher.service "$t/dist/"
install -m 0644 policies/*.yaml "$t/policies/"
install -m 0755 dist/ci/watcher-ci.sh "$t/ci/watcher-ci.sh"
[ -f docs/CI.md ] && install -m 0644 docs/CI.md "$t/CI.md"
printf '%s\n' "$buildinfo" > "$t/BUILDINFO"
# Reproducible: fixed owner, order and times.
mtime=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" -C "$stage" -cf - "$name" | gzip -9n > "$out/$name.tar.gz"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")

# ---------------------------------------------------------------- .deb
d="$stage/deb"
mkdir -p "$d/DEBIAN" "$d/usr/bin" "$d/usr/lib/systemd/system" "$d/etc/watcher/policies" \
  "$d/usr/share/doc/watcher" "$d/usr/share/man/man1" "$d/usr/share/bash-completion/completions" \
  "$d/usr/share/zsh/vendor-completions" "$d/usr/share/fish/vendor_completions.d"
install -m 0755 "$binary" "$d/usr/bin/watcher"
# The unit names /usr/local/bin/watcher (a manual install); the package installs /usr/bin.
sed 's#/usr/local/bin/watcher#/usr/bin/watcher#g' dist/watcher.service > "$d/usr/lib/systemd/system/watcher.service"
install -m 0644 dist/daemon.yaml "$d/etc/watcher/daemon.yaml"
install -m 0644 policies/*.yaml "$d/etc/watcher/policies/"
install -m 0644 README.md "$d/usr/share/doc/watcher/README.md"
printf '%s\n' "$buildinfo" > "$d/usr/share/doc/watcher/BUILDINFO"
"$binary" man | gzip -9n > "$d/usr/share/man/man1/watcher.1.gz"
"$binary" completions bash > "$d/usr/share/bash-completion/completions/watcher"
"$binary" completions zsh > "$d/usr/share/zsh/vendor-completions/_watcher"
"$binary" completions fish > "$d/usr/share/fish/vendor_completions.d/watcher.fish"
chmod 0644 "$d/usr/share/man/man1/watcher.1.gz" "$d/usr/share/bash-completion/completions/watcher" \
  "$d/usr/share/zsh/vendor-completions/_watcher" "$d/usr/share/fish/vendor_completions.d/watcher.fish" \
  "$d/usr/lib/systemd/system/watcher.service"
(cd "$d/etc" && find . -type f | sed 's#^\.#/etc#' | sort) > "$d/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
cat > "$d/DEBIAN/control" <<EOF
Package: watcher
Version: $version
Architecture: amd64
Maintainer: watcher developers <noreply@invalid>
Installed-Size: $size
Depends: libc6 (>= $glibc)
Section: admin
Priority: optional
Homepage: $repository
Description: eBPF build-sandbox egress and syscall watcher for CI
 Watches every process, outbound connection and DNS query of a CI build step from the
 kernel, judges them against a policy (audit or enforce), and writes an event log.
 The daemon (watcher.service) is installed but neither enabled nor started:
 edit /etc/watcher/daemon.yaml, then systemctl enable --now watcher.
EOF
# No maintainer scripts: installing never starts or enables anything.
find "$d" -type d -exec chmod 0755 {} +
dpkg-deb --root-owner-group -Zxz --build "$d" "$out/watcher_${version}_amd64.deb" >/dev/null

install -m 0755 dist/ci/watcher-ci.sh "$out/watcher-ci.sh"
install -m 0755 dist/ci/jenkins/watcher-step.sh "$out/watcher-step.sh"
(cd "$out" && sha256sum "$name.tar.gz" "watcher_${version}_amd64.deb" watcher-ci.sh watcher-step.sh > SHA256SUMS)
echo "release.sh: $out: $name.tar.gz (+.sha256), watcher_${version}_amd64.deb, watcher-ci.sh, watcher-step.sh, SHA256SUMS (commit $commit, glibc >= $glibc)" >&2

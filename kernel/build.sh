#!/usr/bin/env bash
# Builds wisp's minimal x86_64 guest kernel from Debian's linux-source-6.1 with
# patches/*.patch applied: tinyconfig + fragments/*.config, olddefconfig, then
# refuses the result if any
# `=y` a fragment asked for did not survive (a silent Kconfig drop would only
# show up later as a guest that cannot see its disk or its agent channel).
#
# Outputs (in --out, default <repo>/target/kernel): bzImage, vmlinux (PVH, for
# microvm), config. Results are cached under $WISP_CACHE_DIR/kernel/<key>, the
# key hashing the source version, the patches and the fragments, so a rebuild
# is a copy.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$(cd "$here/.." && pwd)/target/kernel"
src_tar=${WISP_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
cache=${WISP_CACHE_DIR:-$HOME/.cache/wisp}
jobs=$(nproc)

usage() {
  cat <<USAGE
usage: kernel/build.sh [--out DIR] [--jobs N]

Builds the guest kernel from $src_tar (apt-get install linux-source-6.1)
with the fragments in kernel/fragments/. Environment:
  WISP_KERNEL_SOURCE  kernel source tarball (default /usr/src/linux-source-6.1.tar.xz)
  WISP_CACHE_DIR      cache of source trees and built kernels (default ~/.cache/wisp)
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kernel/build.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

if [ ! -f "$src_tar" ]; then
  echo "kernel/build.sh: $src_tar not found; run 'make deps' (apt-get install linux-source-6.1)" >&2
  exit 1
fi

fragments=("$here"/fragments/*.config)
patches=()
for p in "$here"/patches/*.patch; do [ -f "$p" ] && patches+=("$p"); done
# The unpacked tree is per source and patch set: a patched tree is never
# mistaken for a pristine one, nor an old patch set for the current one.
src_id="$(stat -c '%s-%Y' "$src_tar")-$(cat /dev/null "${patches[@]}" | sha256sum | cut -c1-8)"
key=$( { echo "$src_id"; cat "${fragments[@]}"; } | sha256sum | cut -c1-16)
result="$cache/kernel/$key"
mkdir -p "$out" "$cache/kernel"

# One build at a time per cache: two makes in one tree corrupt it (CI and a
# developer, or two checkouts, share ~/.cache/wisp).
exec 9>"$cache/kernel/.lock"
if ! flock -n 9; then
  echo "kernel: another build holds $cache/kernel/.lock; waiting"
  flock 9
fi

if [ -f "$result/bzImage" ] && [ -f "$result/vmlinux" ] && [ -f "$result/config" ]; then
  echo "kernel: cached build $key"
else
  srcdir="$cache/kernel/src-$src_id"
  if [ ! -f "$srcdir/Makefile" ]; then
    echo "kernel: unpacking $src_tar"
    rm -rf "$srcdir.tmp"
    mkdir -p "$srcdir.tmp"
    tar -xf "$src_tar" -C "$srcdir.tmp" --strip-components=1
    for p in "${patches[@]}"; do
      echo "kernel: applying $(basename "$p")"
      patch -s -p1 -d "$srcdir.tmp" < "$p"
    done
    rm -rf "$srcdir"
    mv "$srcdir.tmp" "$srcdir"
  fi
  # One tree per source: a fragment change rebuilds only what it touches.
  build="$cache/kernel/build-$src_id"
  mkdir -p "$build"
  # Trees of other sources or patch sets are 1.7 GB each and never used again.
  for old in "$cache"/kernel/src-* "$cache"/kernel/build-*; do
    case "$old" in "$srcdir"|"$srcdir.tmp"|"$build") ;; *) rm -rf "$old" ;; esac
  done
  merged="$build/fragments.config"
  cat "${fragments[@]}" > "$merged"

  make -s -C "$srcdir" O="$build" ARCH=x86_64 tinyconfig >/dev/null
  (cd "$build" && KCONFIG_CONFIG=.config "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$build" .config "$merged" >/dev/null)
  make -s -C "$srcdir" O="$build" ARCH=x86_64 olddefconfig >/dev/null

  # Every option a fragment sets to y must still be y, and every =n must be
  # off: olddefconfig drops options whose dependencies are unmet, and selects
  # others, without a word.
  missing=()
  while IFS= read -r line; do
    opt=${line%%=*}
    grep -qx "$line" "$build/.config" || missing+=("$opt=y")
  done < <(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$merged")
  while IFS= read -r line; do
    opt=${line%%=*}
    if grep -q "^$opt=" "$build/.config"; then missing+=("$opt=n"); fi
  done < <(grep -E '^CONFIG_[A-Z0-9_]+=n$' "$merged")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "kernel/build.sh: these fragment settings did not survive olddefconfig (unmet dependencies or selected by another option):" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
  fi

  echo "kernel: building $key with $jobs jobs (about 10 minutes on 2 cores)"
  start=$(date +%s)
  make -s -C "$srcdir" O="$build" ARCH=x86_64 -j"$jobs" bzImage
  echo "kernel: built in $(( $(date +%s) - start )) s"

  mkdir -p "$result.tmp"
  cp "$build/arch/x86/boot/bzImage" "$result.tmp/bzImage"
  cp "$build/vmlinux" "$result.tmp/vmlinux"
  cp "$build/.config" "$result.tmp/config"
  rm -rf "$result"
  mv "$result.tmp" "$result"
fi

cp "$result/bzImage" "$result/vmlinux" "$result/config" "$out/"
echo "kernel: $out/bzImage ($(stat -c %s "$out/bzImage") bytes), $out/vmlinux, $out/config"

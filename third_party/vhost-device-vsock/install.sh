#!/bin/sh
# Installs vhost-device-vsock 0.3.0 from crates.io with our patch (README.md here says why)
# into cargo's bin directory, unless the patched build is already there. Called by `make deps`.
set -eu
VERSION=0.3.0
MARK=+wisp.1
here=$(cd "$(dirname "$0")" && pwd)
if vhost-device-vsock --version 2>/dev/null | grep -qF "$VERSION$MARK"; then
  exit 0
fi
echo "deps: building vhost-device-vsock $VERSION with our patch (~3 min)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# cargo has no download command: a throwaway package that depends on the crate makes
# `cargo fetch` put its .crate in cargo's cache, checksum verified against the index.
mkdir -p "$work/fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nvhost-device-vsock = "=%s"\n' \
  "$VERSION" > "$work/fetch/Cargo.toml"
: > "$work/fetch/src/lib.rs"
cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/vhost-device-vsock-$VERSION.crate | head -n 1)
tar -xzf "$crate" -C "$work"
patch -d "$work/vhost-device-vsock-$VERSION" -p1 --quiet < "$here/0001-keep-serving-when-a-host-connection-beats-the-vrings.patch"
cargo install --locked --quiet --force --path "$work/vhost-device-vsock-$VERSION"
vhost-device-vsock --version | grep -qF "$VERSION$MARK"

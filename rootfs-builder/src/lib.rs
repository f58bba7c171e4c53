//! rootfs-builder: builds the initrd images that boot wisp guests, and the container bundles
//! and OCI images wisp runs.
//!
//! The crate is a library plus a thin binary so every step is unit-testable:
//! [`archive`] (deterministic newc cpio), [`compress`] (kernel-compatible
//! gzip/zstd out, gz/xz/zst in), [`elf`] (static-binary and `.modinfo`
//! checks), [`busybox`], [`modules`] (module trees, `.deb` packages,
//! `modules.dep` closure), [`initrd`] (assembling the image), [`rootfs`]
//! (ext4/erofs disk images of the same tree), [`image`] (reading docker-archive and OCI layout
//! tarballs; [`select`] picks one image of several), [`layer`] (applying layers without escaping the root; [`xattrs`] their extended attributes), [`bundle`] (OCI runtime
//! bundles), [`oci_image`] (writing OCI layout tarballs), [`output`] (the `-o` path: owned by the caller,
//! trees private), [`progress`] and [`cli`].

#![forbid(unsafe_code)]

pub mod archive;
pub mod bundle;
pub mod busybox;
pub mod cli;
pub mod compress;
pub mod elf;
pub mod image;
pub mod initrd;
pub mod layer;
pub mod modules;
pub mod oci_image;
pub mod output;
pub mod progress;
pub mod rootfs;
pub mod select;
pub mod xattrs;

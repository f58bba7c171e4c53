//! rootfs-builder: builds the initrd images that boot wisp guests.
//!
//! The crate is a library plus a thin binary so every step is unit-testable:
//! [`archive`] (deterministic newc cpio), [`compress`] (kernel-compatible
//! gzip/zstd out, gz/xz/zst in), [`elf`] (static-binary and `.modinfo`
//! checks), [`busybox`], [`modules`] (module trees, `.deb` packages,
//! `modules.dep` closure), [`initrd`] (assembling the image), [`rootfs`]
//! (ext4/erofs disk images of the same tree) and [`cli`].

#![forbid(unsafe_code)]

pub mod archive;
pub mod busybox;
pub mod cli;
pub mod compress;
pub mod elf;
pub mod initrd;
pub mod modules;
pub mod rootfs;

//! Compression in both directions: the initrd is compressed in a form the
//! kernel's own initramfs decompressors accept, and inputs (Debian package
//! members, compressed kernel modules) are decompressed because the guest
//! loads modules with a plain `finit_module` and has no decompressor.
//!
//! Output choices, and why:
//! * gzip: a single member at best compression, with mtime 0, no file name
//!   and a fixed OS byte, so the bytes depend only on the input.
//! * zstd: one level-19 frame with the content size and a checksum, like the
//!   kernel's own `cmd_zstd`. The window is capped at 8 MiB (`windowLog` 23):
//!   the kernel's initramfs `unzstd` streams and must allocate the whole window
//!   at boot, and the kernel build notes that only the 8 MiB level is meant for
//!   initramfs (no `--long`, no `--ultra` levels).

use std::io::{self, Read, Write};

/// zstd level used for initrds (the kernel's `cmd_zstd` uses the same).
pub const ZSTD_LEVEL: i32 = 19;
/// log2 of the largest zstd window we emit: 8 MiB.
pub const ZSTD_MAX_WINDOW_LOG: u32 = 23;
/// gzip header OS byte for Unix, fixed so the output does not depend on the host.
const GZIP_OS_UNIX: u8 = 3;

/// How the finished cpio archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    /// gzip, best compression (every kernel has CONFIG_RD_GZIP)
    #[default]
    Gzip,
    /// zstd level 19, 8 MiB window (needs CONFIG_RD_ZSTD, kernel >= 5.9)
    Zstd,
    /// uncompressed newc cpio
    None,
}

impl Compression {
    /// Lower-case name, as accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

/// A compression format found on an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Xz,
    Zstd,
}

impl Codec {
    /// The codec implied by a file name suffix (`.gz`, `.xz`, `.zst`), if any.
    pub fn from_name(name: &str) -> Option<Codec> {
        if name.ends_with(".gz") {
            Some(Codec::Gzip)
        } else if name.ends_with(".xz") {
            Some(Codec::Xz)
        } else if name.ends_with(".zst") {
            Some(Codec::Zstd)
        } else {
            None
        }
    }

    /// The codec whose magic number starts `head`, if any (image layers and archives are
    /// recognised by content: media types and file names are not always right).
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Codec::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Codec::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Codec::Xz)
        } else {
            None
        }
    }

    /// The file name suffix, including the dot.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::Gzip => ".gz",
            Codec::Xz => ".xz",
            Codec::Zstd => ".zst",
        }
    }

    /// Wraps `reader` in a streaming decoder for this codec.
    pub fn decoder<'a, R: Read + 'a>(self, reader: R) -> Result<Box<dyn Read + 'a>, CompressError> {
        Ok(match self {
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Codec::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
            Codec::Zstd => {
                let mut d =
                    zstd::stream::read::Decoder::new(reader).map_err(|e| CompressError::Decode(Codec::Zstd, e))?;
                // Accept any window an input may use (e.g. `zstd --long`).
                d.window_log_max(31).map_err(|e| CompressError::Decode(Codec::Zstd, e))?;
                Box::new(d)
            }
        })
    }

    /// Decompresses a whole buffer.
    pub fn decompress(self, data: &[u8]) -> Result<Vec<u8>, CompressError> {
        let mut out = Vec::with_capacity(data.len().saturating_mul(3));
        self.decoder(data)?.read_to_end(&mut out).map_err(|e| CompressError::Decode(self, e))?;
        Ok(out)
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
        })
    }
}

/// Errors while compressing or decompressing.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("{0} compression failed")]
    Encode(&'static str, #[source] io::Error),
    #[error("{0} data is corrupt or truncated")]
    Decode(Codec, #[source] io::Error),
}

/// Compresses a finished archive.
pub fn compress(data: &[u8], how: Compression) -> Result<Vec<u8>, CompressError> {
    match how {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => gzip(data).map_err(|e| CompressError::Encode("gzip", e)),
        Compression::Zstd => zstd_frame(data).map_err(|e| CompressError::Encode("zstd", e)),
    }
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(Vec::with_capacity(data.len() / 2), flate2::Compression::best());
    enc.write_all(data)?;
    enc.finish()
}

fn zstd_frame(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(data.len() / 2), ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(true)?;
    enc.long_distance_matching(false)?;
    enc.window_log(ZSTD_MAX_WINDOW_LOG)?;
    enc.set_pledged_src_size(Some(data.len() as u64))?;
    enc.write_all(data)?;
    enc.finish()
}

/// The window size a zstd frame header declares (what a streaming decoder must
/// allocate), or `None` if `frame` does not start with a valid frame header.
pub fn zstd_window_size(frame: &[u8]) -> Option<u64> {
    let rest = frame.strip_prefix(&[0x28, 0xb5, 0x2f, 0xfd])?;
    let fhd = *rest.first()?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *rest.get(1)?;
        let exponent = u64::from(wd >> 3);
        let mantissa = u64::from(wd & 7);
        let base = 1u64 << (10 + exponent);
        return Some(base + base / 8 * mantissa);
    }
    // Single segment: the window is the content size.
    let dict_id_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let start = 1 + dict_id_len;
    let fcs = rest.get(start..start + fcs_len)?;
    let mut buf = [0u8; 8];
    buf[..fcs_len].copy_from_slice(fcs);
    let v = u64::from_le_bytes(buf);
    Some(if fcs_len == 2 { v + 256 } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a text-like pseudo-random stream.
        let mut x: u32 = 12345;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b"abcdefgh ijklmnop\n"[(x >> 16) as usize % 18]
            })
            .collect()
    }

    #[test]
    fn gzip_roundtrip_and_fixed_header() {
        let data = sample(100_000);
        let gz = compress(&data, Compression::Gzip).unwrap();
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0], "deflate, no FNAME/FEXTRA flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gz[9], GZIP_OS_UNIX);
        assert_eq!(Codec::Gzip.decompress(&gz).unwrap(), data);
        assert_eq!(gz, compress(&data, Compression::Gzip).unwrap());
    }

    #[test]
    fn zstd_roundtrip_and_small_window() {
        let data = sample(300_000);
        let z = compress(&data, Compression::Zstd).unwrap();
        assert!(zstd_window_size(&z).unwrap() <= 1 << ZSTD_MAX_WINDOW_LOG);
        assert_eq!(Codec::Zstd.decompress(&z).unwrap(), data);
        assert_eq!(z, compress(&data, Compression::Zstd).unwrap());
    }

    #[test]
    fn zstd_window_capped_for_large_input() {
        // Larger than the cap, so the frame must declare exactly 8 MiB.
        let data: Vec<u8> = (0..9u32 << 20).map(|i| (i % 251) as u8).collect();
        let z = compress(&data, Compression::Zstd).unwrap();
        assert_eq!(zstd_window_size(&z), Some(1 << ZSTD_MAX_WINDOW_LOG));
    }

    #[test]
    fn none_is_identity() {
        assert_eq!(compress(b"abc", Compression::None).unwrap(), b"abc");
    }

    #[test]
    fn xz_decode() {
        use liblzma::write::XzEncoder;
        let data = sample(10_000);
        let mut enc = XzEncoder::new(Vec::new(), 6);
        enc.write_all(&data).unwrap();
        let xz = enc.finish().unwrap();
        assert_eq!(Codec::Xz.decompress(&xz).unwrap(), data);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        for c in [Codec::Gzip, Codec::Xz, Codec::Zstd] {
            assert!(c.decompress(b"definitely not compressed").is_err(), "{c}");
        }
        assert_eq!(Codec::from_name("a.ko.zst"), Some(Codec::Zstd));
        assert_eq!(Codec::from_name("a.ko"), None);
    }
}

//! Reading `/proc/self/mountinfo`: its mount points, unescaped.

use std::path::PathBuf;

/// A mountinfo field with the kernel's octal escapes (`\040` for a space, also tab, newline
/// and backslash) decoded.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::try_from(d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'))).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points (fifth field) of a mountinfo text, in its order.
pub fn mount_points(text: &str) -> Vec<PathBuf> {
    text.lines().filter_map(|line| line.split(' ').nth(4)).map(|field| PathBuf::from(unescape(field))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_decoded_and_odd_ones_kept() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\04"), "/a\\04");
        assert_eq!(unescape("/a\\777b"), "/a\\777b", "not a byte: kept as written");
        assert_eq!(unescape("\\134"), "\\");
    }

    #[test]
    fn mount_points_in_order() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    30 22 0:30 / /run/kata-containers/shared/containers rw - virtiofs kataShared rw\n\
                    31 30 0:30 /c1 /run/kata-containers/shared/containers/c1\\040x rw - virtiofs kataShared rw\n";
        assert_eq!(
            mount_points(text),
            ["/proc", "/run/kata-containers/shared/containers", "/run/kata-containers/shared/containers/c1 x"]
                .map(PathBuf::from)
        );
    }
}

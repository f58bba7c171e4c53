//! The console line the floor prints once it listens, formatted without an allocator:
//! `WISP-FLOOR uptime=1.234567 port=1024\n` (`CLOCK_BOOTTIME`, microseconds; the busybox
//! floor prints `/proc/uptime`, the same clock in 10 ms steps).

use crate::{PORT, READY_MARKER};

/// Longest line: the marker, 20 digits of seconds, `.`, 6 digits, the port field, newline.
pub const MAX_LEN: usize = READY_MARKER.len() + 20 + 1 + 6 + " port=".len() + 10 + 1;

/// Formats the line for `secs`.`nanos` into `buf`; returns its length.
pub fn format(buf: &mut [u8; MAX_LEN], secs: u64, nanos: u32) -> usize {
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            buf[len] = b;
            len += 1;
        }
    };
    push(READY_MARKER.as_bytes());
    let mut digits = [0u8; 20];
    push(decimal(&mut digits, secs, 1));
    push(b".");
    push(decimal(&mut digits, u64::from(nanos.min(999_999_999) / 1000), 6));
    push(b" port=");
    push(decimal(&mut digits, u64::from(PORT), 1));
    push(b"\n");
    len
}

/// `value` in decimal, left-padded with zeros to at least `width` digits (at most 20).
fn decimal(digits: &mut [u8; 20], mut value: u64, width: usize) -> &[u8] {
    let mut start = digits.len();
    while value > 0 || digits.len() - start < width.min(digits.len()) {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(secs: u64, nanos: u32) -> String {
        let mut buf = [0u8; MAX_LEN];
        let len = format(&mut buf, secs, nanos);
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    #[test]
    fn microseconds_are_zero_padded() {
        assert_eq!(line(1, 23_456_789), "WISP-FLOOR uptime=1.023456 port=1024\n");
        assert_eq!(line(0, 0), "WISP-FLOOR uptime=0.000000 port=1024\n");
        assert_eq!(line(12, 999_999_999), "WISP-FLOOR uptime=12.999999 port=1024\n");
    }

    #[test]
    fn the_widest_values_fit() {
        let text = line(u64::MAX, u32::MAX);
        assert_eq!(text, "WISP-FLOOR uptime=18446744073709551615.999999 port=1024\n");
        assert!(text.len() <= MAX_LEN);
    }

    #[test]
    fn the_bench_parses_what_is_printed() {
        let text = line(2, 90_000_000);
        let uptime: f64 = text.split_once(READY_MARKER).unwrap().1.split_whitespace().next().unwrap().parse().unwrap();
        assert_eq!(uptime, 2.09);
    }
}

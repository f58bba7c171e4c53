//! The container and exec ids both ends accept.
//!
//! Ids name directories in the guest and on the host and appear in logs, so only a
//! conservative alphabet is accepted: the one runc and Kata accept. The shim checks it before
//! booting a VM, so a bad id fails fast with the same words the agent would use.

/// The longest id, in bytes.
pub const MAX_LEN: usize = 128;

/// Why `id` is not `[A-Za-z0-9][A-Za-z0-9_.-]*` of at most [`MAX_LEN`] bytes (never a path
/// separator, never `.` or `..`, never hidden); `None` when it is.
pub fn invalid(id: &str) -> Option<&'static str> {
    let Some(first) = id.chars().next() else {
        return Some("empty");
    };
    if id.len() > MAX_LEN {
        return Some("longer than 128 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return Some("must start with a letter or digit");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Some("only letters, digits, '_', '.' and '-' are allowed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::invalid;

    #[test]
    fn good_ids() {
        for id in ["c1", "a", "0123abcdef", "my_ctr.v2-x", &"f".repeat(128)] {
            assert_eq!(invalid(id), None, "{id:?}");
        }
    }

    #[test]
    fn bad_ids_say_why() {
        for id in ["", ".", "..", "../x", "a/b", "-x", "_x", ".hidden", "a b", "a\0b", "é", &"f".repeat(129)] {
            assert!(invalid(id).is_some(), "{id:?}");
        }
        assert_eq!(invalid("a/b"), Some("only letters, digits, '_', '.' and '-' are allowed"));
    }
}

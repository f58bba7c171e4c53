//! Container and exec ids: they name directories and appear in logs, so only
//! a conservative alphabet is accepted (the one runc and Kata accept).

use crate::error::AgentError;

const MAX_LEN: usize = 128;

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128 bytes: never a path separator,
/// never `.` or `..`, never hidden.
pub fn validate(kind: &str, id: &str) -> Result<(), AgentError> {
    let bad = |why: &str| Err(AgentError::InvalidArgument(format!("{kind} id {id:?}: {why}")));
    let Some(first) = id.chars().next() else {
        return bad("empty");
    };
    if id.len() > MAX_LEN {
        return bad("longer than 128 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn good_ids() {
        for id in ["c1", "a", "0123abcdef", "my_ctr.v2-x", &"f".repeat(128)] {
            validate("container", id).unwrap();
        }
    }

    #[test]
    fn bad_ids_are_invalid_arguments_naming_the_id() {
        for id in ["", ".", "..", "../x", "a/b", "-x", "_x", ".hidden", "a b", "a\0b", "é", &"f".repeat(129)] {
            let e = validate("container", id).unwrap_err().to_string();
            assert!(e.starts_with("invalid argument: container id"), "{id:?}: {e}");
        }
    }
}

//! Container and exec ids: the agent refuses what [`protocols::id`] does not accept.

use crate::error::AgentError;

/// Checks `id` (a `kind` id: "container", "exec") against [`protocols::id::invalid`].
pub fn validate(kind: &str, id: &str) -> Result<(), AgentError> {
    match protocols::id::invalid(id) {
        Some(why) => Err(AgentError::InvalidArgument(format!("{kind} id {id:?}: {why}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn bad_ids_are_invalid_arguments_naming_the_id() {
        validate("container", "c1").unwrap();
        for id in ["", "..", "a/b", "a b"] {
            let e = validate("container", id).unwrap_err().to_string();
            assert!(e.starts_with("invalid argument: container id"), "{id:?}: {e}");
        }
    }
}

//! The environment variables the host side reads, in one place: each overrides one setting of
//! the configuration file (or of the built-in default) for one process, the way tests and
//! administrators point a shim elsewhere without editing a file. An empty value counts as unset.
//!
//! | variable | overrides |
//! |---|---|
//! | [`CONFIG_ENV`] | the configuration file's path (before `/etc`, then the distribution's) |
//! | [`STATE_DIR_ENV`] | the state root (`/run/wisp`) |
//! | [`DIRECT_VOLUMES_ENV`] | `runtime.direct_volumes_dir`, Kata's direct-volume root |
//! | [`VHOST_USER_STORE_ENV`] | `hypervisor.qemu.vhost_user_store_path` |
//! | [`ACCEL_ENV`] | `accel = "auto"`: `kvm` or `tcg` without a probe |

use std::path::PathBuf;

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "WISP_CONFIG";
/// The environment variable naming the state root.
pub const STATE_DIR_ENV: &str = "WISP_STATE_DIR";
/// The environment variable naming the direct-volume root.
pub const DIRECT_VOLUMES_ENV: &str = "WISP_DIRECT_VOLUMES_DIR";
/// The environment variable naming the vhost-user store.
pub const VHOST_USER_STORE_ENV: &str = "WISP_VHOST_USER_STORE";
/// The environment variable forcing the accelerator.
pub const ACCEL_ENV: &str = "WISP_ACCEL";

/// `name`'s value as a path, if set and not empty.
pub fn path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `name`'s value as text, if set, not empty and UTF-8.
pub fn text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unset_and_empty_are_the_same() {
        // Names of this test only: no other test's `set_var` races them.
        assert_eq!(super::path("WISP_ENV_TEST_UNSET"), None);
        std::env::set_var("WISP_ENV_TEST_EMPTY", "");
        assert_eq!(super::path("WISP_ENV_TEST_EMPTY"), None);
        assert_eq!(super::text("WISP_ENV_TEST_EMPTY"), None);
        std::env::set_var("WISP_ENV_TEST_SET", "/x");
        assert_eq!(super::path("WISP_ENV_TEST_SET"), Some("/x".into()));
        assert_eq!(super::text("WISP_ENV_TEST_SET").as_deref(), Some("/x"));
    }
}

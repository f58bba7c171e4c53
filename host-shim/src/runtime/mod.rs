//! `wisp-runtime`: runc's command line on the sandbox core.
pub mod control;
pub mod json_log;
pub mod launch;
pub mod monitor;
pub mod status;

//! Reaping every child of the agent, and the one way to wait for a child yourself.
//!
//! The agent collects all its children with `waitpid(-1)`: as PID 1 it must
//! (orphans are reparented to it), and on a host it is a child subreaper so
//! containers behave the same. Code that starts a helper and waits for it
//! with `std::process::Child::wait` (hooks, the launcher's intermediate
//! process) would then race the reaper and get ECHILD; std's own `spawn`
//! even asserts that its wait succeeds when an exec fails. So such code holds
//! [`own_children`] from before the spawn until after its wait, and the
//! reaper does not run meanwhile: it tries again shortly after.

use std::sync::{RwLock, RwLockReadGuard, TryLockError};

use super::exits::ExitTable;

static REAPING: RwLock<()> = RwLock::new(());

/// While alive, the reaper leaves every child alone (see the module docs).
#[derive(Debug)]
pub struct OwnChildren(#[allow(dead_code)] RwLockReadGuard<'static, ()>);

/// Blocks only while a reaping pass is running (microseconds).
pub fn own_children() -> OwnChildren {
    OwnChildren(REAPING.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// One reaping pass: every exited child goes to `table`. Returns false, having
/// done nothing, while someone holds [`own_children`]; call again later.
pub fn reap_into(table: &ExitTable, log: &slog::Logger) -> bool {
    let _pass = match REAPING.try_write() {
        Ok(guard) => guard,
        Err(TryLockError::WouldBlock) => return false,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
    };
    for exit in wisp_init::reaper::reap() {
        let claimed = table.deliver(exit.pid, exit.status);
        slog::debug!(log, "child reaped"; "child_pid" => exit.pid, "status" => exit.status, "claimed" => claimed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reaper_stays_away_while_a_child_is_owned() {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let table = ExitTable::new();
        let owned = own_children();
        let child = std::process::Command::new("true").spawn().unwrap();
        assert!(!reap_into(&table, &log), "no pass while owned");
        let mut child = child;
        assert!(child.wait().unwrap().success(), "our own wait got the status");
        // No pass after the drop here: it would reap the children of tests
        // running in parallel threads of this binary.
        drop(owned);
    }
}

//! The routing of reaped exit statuses to the processes that wait for them.
//!
//! The agent reaps every child with `waitpid(-1)` (it is PID 1, or a child
//! subreaper on a host), so no other code may wait for a pid: the reaper hands
//! each status to this table, and a process's waiters watch its entry.
//!
//! A container process can die before the code that launched it has learnt
//! and registered its pid (an exec that fails at once, a kill racing the
//! create). Such an exit is kept, and the registration claims it. To keep an
//! exit of an unrelated process whose pid was later reused from being claimed
//! by mistake, a registration only claims exits reaped after its [`Ticket`]
//! was taken, and the ticket is taken before the launch that produced the pid.
//! Exits nobody claims (orphans reparented to the agent, the launcher's
//! intermediate processes) are bounded: the oldest are dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::watch;

/// Unclaimed exits kept at most; the oldest go first.
const MAX_UNCLAIMED: usize = 4096;

/// What `waitpid` said about a process, in the shell convention the Kata
/// protocol uses: the exit code, or 128 + the signal that killed it.
pub type ExitStatus = i32;

/// The reaper's sequence number when a launch began.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

#[derive(Debug, Default)]
struct Table {
    /// Registered pids and the channel their waiters watch.
    waiting: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    /// Exits nobody had registered yet, in reaping order: (sequence, pid, status).
    unclaimed: VecDeque<(u64, i32, ExitStatus)>,
    /// Exits routed so far.
    seq: u64,
}

/// The pid -> waiter table the reaper feeds.
#[derive(Debug, Default)]
pub struct ExitTable {
    inner: Mutex<Table>,
}

impl ExitTable {
    pub fn new() -> Self {
        ExitTable::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic elsewhere while holding the lock leaves the table consistent
        // (every operation is a single insert/remove), so keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Taken before launching a process whose pid will be registered.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().seq)
    }

    /// Watches `pid`'s exit. Claims an exit already reaped since `ticket`.
    pub fn register(&self, pid: i32, ticket: Ticket) -> watch::Receiver<Option<ExitStatus>> {
        let mut t = self.lock();
        let claimed = t.unclaimed.iter().rposition(|&(seq, p, _)| p == pid && seq > ticket.0);
        if let Some(i) = claimed {
            let status = t.unclaimed.remove(i).map(|(_, _, status)| status);
            return watch::channel(status).1;
        }
        let (tx, rx) = watch::channel(None);
        t.waiting.insert(pid, tx);
        rx
    }

    /// Routes one reaped exit. Returns whether a registered process took it.
    pub fn deliver(&self, pid: i32, status: ExitStatus) -> bool {
        let mut t = self.lock();
        t.seq += 1;
        if let Some(tx) = t.waiting.remove(&pid) {
            tx.send_replace(Some(status));
            return true;
        }
        let seq = t.seq;
        if t.unclaimed.len() == MAX_UNCLAIMED {
            t.unclaimed.pop_front();
        }
        t.unclaimed.push_back((seq, pid, status));
        false
    }
}

/// Waits until the watched process has exited and returns its status.
pub async fn wait(mut rx: watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    match rx.wait_for(Option::is_some).await {
        Ok(status) => *status,
        // The table dropped the sender without a status: only when the agent stops.
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registered_waiters_all_get_the_status() {
        let t = ExitTable::new();
        let rx = t.register(10, t.ticket());
        let (a, b) = (rx.clone(), rx);
        assert!(t.deliver(10, 137));
        assert_eq!(wait(a).await, Some(137));
        assert_eq!(wait(b).await, Some(137));
    }

    #[tokio::test]
    async fn an_exit_reaped_before_registration_is_claimed() {
        let t = ExitTable::new();
        let ticket = t.ticket();
        assert!(!t.deliver(11, 3));
        assert_eq!(wait(t.register(11, ticket)).await, Some(3));
        // Claimed once: a later process with the same pid waits for its own exit.
        let rx = t.register(11, ticket);
        assert_eq!(*rx.borrow(), None);
    }

    #[test]
    fn an_exit_older_than_the_ticket_is_not_claimed() {
        let t = ExitTable::new();
        t.deliver(12, 1);
        let rx = t.register(12, t.ticket());
        assert_eq!(*rx.borrow(), None, "a reused pid must not inherit an old exit");
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let t = ExitTable::new();
        let ticket = t.ticket();
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            t.deliver(pid, 0);
        }
        assert_eq!(t.lock().unclaimed.len(), MAX_UNCLAIMED);
        assert_eq!(*t.register(0, ticket).borrow(), None, "the oldest were dropped");
        assert_eq!(*t.register(MAX_UNCLAIMED as i32 + 9, ticket).borrow(), Some(0));
    }
}

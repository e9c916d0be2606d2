//! Who is signed in: what every page and action of the console is given. Read and written
//! by `auth` (sign-in, the session cookie); only read by the pages and the templates.

use crate::config::ConsoleRole;

/// A signed-in user, as every page after login sees them.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user name: what the audit trail records as the actor.
    pub user: String,
    /// What they may do (from the configuration, now).
    pub role: ConsoleRole,
    /// The synchronizer token their state-changing requests must carry.
    pub csrf: String,
}

impl Session {
    /// Whether the user may act (pause, replay, refund, …).
    pub fn can_act(&self) -> bool {
        self.role == ConsoleRole::Operator
    }
}

//! What the agent's role may see. `pg_stat_activity` shows other users'
//! sessions only to superusers and members of `pg_read_all_stats` (which
//! `pg_monitor` includes); to others their state is NULL and their query
//! reads `<insufficient privilege>`. The agent checks once per connection
//! and says so, rather than storing hidden rows as if they were idle.

use tokio_postgres::Client;

/// How a role lacking `pg_monitor` is told to mend it (after its name).
pub const PRIVILEGE_ADVICE: &str = "is not in pg_monitor: other users' sessions show as \
     insufficient privilege (state and query unknown); GRANT pg_monitor TO the agent's role";

/// The agent role's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// `current_user`.
    pub role: String,
    /// Superuser.
    pub superuser: bool,
    /// Member of `pg_read_all_stats` (directly or through `pg_monitor`).
    pub read_all_stats: bool,
}

impl Privileges {
    /// Whether every session's details are visible.
    pub fn sees_all_sessions(&self) -> bool {
        self.superuser || self.read_all_stats
    }
}

/// Asks the server what the connected role may see.
pub async fn read_privileges(client: &Client) -> Result<Privileges, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, \
                    coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false), \
                    pg_has_role('pg_read_all_stats', 'USAGE')",
            &[],
        )
        .await?;
    Ok(Privileges {
        role: row.get(0),
        superuser: row.get(1),
        read_all_stats: row.get(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_standing_sees_everything() {
        let p = |superuser, read_all_stats| Privileges {
            role: "r".into(),
            superuser,
            read_all_stats,
        };
        assert!(p(true, false).sees_all_sessions());
        assert!(p(false, true).sees_all_sessions());
        assert!(!p(false, false).sees_all_sessions());
        assert!(PRIVILEGE_ADVICE.contains("pg_monitor"));
    }
}

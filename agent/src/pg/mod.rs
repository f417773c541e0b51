//! What the agent asks PostgreSQL: `pg_stat_activity` ([`activity`]) and the
//! instance's facts ([`facts`]), version-aware for PostgreSQL 12 to 18.

pub mod activity;
pub mod facts;

//! What the agent asks PostgreSQL: `pg_stat_activity` ([`activity`]), the
//! instance's facts ([`facts`]) and the role's standing ([`privilege`]),
//! version-aware for PostgreSQL 12 to 18; and the normalization of query
//! texts before they leave the host ([`normalize`]).

pub mod activity;
pub mod facts;
pub mod normalize;
pub mod privilege;

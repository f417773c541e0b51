//! The state at a moment: each instance's sample at or just before it,
//! instances read in parallel.

use pgtrail_proto::pb;
use pgtrail_proto::time::Micros;

use super::fan_out::fan_out;
use super::{History, QueryError};
use crate::store::InstanceRecord;

impl History {
    /// Every session and process of each instance in `scope`, as sampled
    /// at or just before `at`. Instances with no sample by then are left
    /// out.
    pub fn at(&self, scope: &pb::Scope, at: Micros) -> Result<Vec<pb::InstanceState>, QueryError> {
        let states = fan_out(self.resolve(scope)?, |r| self.state_at(r, at))?;
        Ok(states.into_iter().flatten().collect())
    }

    /// One instance's sample at or just before `at`, with its texts.
    fn state_at(
        &self,
        r: InstanceRecord,
        at: Micros,
    ) -> Result<Option<pb::InstanceState>, QueryError> {
        let Some((sampled_at, sample)) = self.store.sample_at(r.id, at)? else {
            return Ok(None);
        };
        let texts = self
            .store
            .query_texts(&mut sample.sessions.iter().filter_map(|s| s.query_id))?;
        let mut queries: Vec<pb::QueryText> = texts
            .into_iter()
            .map(|(id, text)| pb::QueryText { id, text })
            .collect();
        queries.sort_unstable_by_key(|q| q.id);
        Ok(Some(pb::InstanceState {
            port: self.port_at(&r, sampled_at)?,
            host: r.host,
            instance: r.instance,
            sampled_at_us: sampled_at,
            sessions: sample.sessions,
            processes: sample.processes,
            queries,
            blind_spots: sample.blind_spots,
        }))
    }
}

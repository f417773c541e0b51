//! The delta chains of [`SledStore`]'s samples: how a sample is encoded
//! against the instance's previous one, how a stored delta is rebuilt into
//! a full sample, and where retention may cut without breaking a chain.
//! The format itself is [`super::delta`].

use pgtrail_proto::time::Micros;

use super::delta::{Base, Encoded, Rows};
use super::keys::{self, InstanceId, Resolution};
use super::records::StoredSample;
use super::sled::{decode, SledStore};
use super::{Append, StoreError};

impl SledStore {
    /// How `a`'s sample is stored, and its rows as the next sample's
    /// base: a delta against the instance's previous sample when that is
    /// in the same minute and older, else a keyframe.
    pub(super) fn encode_sample(&self, a: &Append) -> (Vec<u8>, Base) {
        let current = Encoded::of(&a.sample);
        let chains = self.chains.lock().expect("not poisoned");
        match chains.get(&a.instance) {
            Some((last, base))
                if *last < a.sampled_at
                    && Resolution::Minute.start_of(*last)
                        == Resolution::Minute.start_of(a.sampled_at) =>
            {
                let current = current.into_base();
                (base.delta(*last, &current, &a.sample), current)
            }
            _ => {
                drop(chains);
                (current.keyframe(&a.sample), current.into_base())
            }
        }
    }

    /// A stored sample with all its rows: a keyframe as it is, a delta
    /// rebuilt from its chain.
    pub(super) fn rebuild(
        &self,
        instance: InstanceId,
        at: Micros,
        sample: StoredSample,
    ) -> Result<StoredSample, StoreError> {
        if sample.keyframe {
            return Ok(sample);
        }
        let mut deltas = vec![sample];
        let mut rows = loop {
            let last = deltas.last().expect("not empty");
            let base_at = last.base_us.ok_or(StoreError::BrokenChain(at, instance))?;
            let base = self
                .samples
                .get(keys::instance_time(instance, base_at))?
                .ok_or(StoreError::BrokenChain(at, instance))?;
            let base: StoredSample = decode("samples", &base)?;
            if base.keyframe {
                break Rows::of(&base);
            }
            deltas.push(base);
        };
        for d in deltas.iter().rev() {
            rows.apply(d);
        }
        let mut out = deltas.swap_remove(0);
        rows.fill(&mut out);
        Ok(out)
    }

    /// The time of the keyframe the first sample at or after `t` builds on:
    /// cutting there keeps every remaining chain whole.
    pub(super) fn chain_start(
        &self,
        instance: InstanceId,
        t: Micros,
    ) -> Result<Micros, StoreError> {
        let Some(first) = Self::instance_range(&self.samples, instance, t, Micros::MAX).next()
        else {
            return Ok(t);
        };
        let (k, v) = first?;
        let mut at = keys::time_of_instance_key(&k);
        let mut sample: StoredSample = decode("samples", &v)?;
        while !sample.keyframe {
            let Some(base) = sample.base_us else { break };
            let Some(v) = self.samples.get(keys::instance_time(instance, base))? else {
                break;
            };
            at = base;
            sample = decode("samples", &v)?;
        }
        Ok(at.min(t))
    }
}

//! Identity clustering: accounts sharing a payment instrument, IP range or device fingerprint
//! with many others.

use crate::api::Identity;
use std::collections::HashMap;

/// Group sizes by shared identity attribute, updated as accounts open.
#[derive(Default)]
pub struct Clusters {
    groups: HashMap<(u8, u32), u32>,
    /// Accounts per identity attribute, kept only when asked for (cluster escalation).
    members: Option<HashMap<(u8, u32), Vec<u32>>>,
}

fn keys(id: &Identity) -> [(u8, u32); 3] {
    [(0, id.payment), (1, id.ip_asn), (2, id.fingerprint)]
}

impl Clusters {
    /// Keep each attribute's accounts from now on (for [`Clusters::members`]).
    pub fn keep_members(&mut self) {
        self.members.get_or_insert_with(HashMap::new);
    }

    /// Record account `a`'s identity, for [`Clusters::members`] (when kept).
    pub fn add_member(&mut self, id: &Identity, a: u32) {
        if let Some(m) = self.members.as_mut() {
            for k in keys(id) {
                m.entry(k).or_default().push(a);
            }
        }
    }

    /// Every account sharing an identity attribute with `id` (itself included; empty unless
    /// members are kept), each once, in opening order.
    pub fn members(&self, id: &Identity) -> Vec<u32> {
        let Some(m) = self.members.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<u32> = keys(id)
            .iter()
            .flat_map(|k| m.get(k).into_iter().flatten().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub fn add(&mut self, id: &Identity) {
        for k in keys(id) {
            *self.groups.entry(k).or_default() += 1;
        }
    }

    /// The largest group sharing any identity attribute with `id`.
    pub fn size(&self, id: &Identity) -> usize {
        keys(id)
            .iter()
            .map(|k| self.groups.get(k).copied().unwrap_or(1) as usize)
            .max()
            .unwrap_or(1)
    }
}

pub fn fires(min_size: usize, cluster: usize) -> bool {
    cluster >= min_size
}

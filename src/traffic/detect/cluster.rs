//! Identity clustering: accounts sharing a payment instrument, IP range or device fingerprint
//! with many others.

use crate::api::Identity;
use std::collections::HashMap;

/// Group sizes by shared identity attribute, updated as accounts open.
#[derive(Default)]
pub struct Clusters {
    groups: HashMap<(u8, u32), u32>,
}

fn keys(id: &Identity) -> [(u8, u32); 3] {
    [(0, id.payment), (1, id.ip_asn), (2, id.fingerprint)]
}

impl Clusters {
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

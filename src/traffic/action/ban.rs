//! Ban: every later request of the account is refused.

use crate::api::{Api, Status};

pub fn ban(api: &mut Api, a: usize) {
    api.accounts.status[a] = Status::Banned;
}

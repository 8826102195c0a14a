//! Fallback routing: the account's later requests are answered by the weaker fallback model,
//! marked by `Code::Fallback` (visible) or not (silent).

use crate::api::{Api, Status};

pub fn route(api: &mut Api, a: usize, visible: bool) {
    api.accounts.status[a] = Status::Fallback { visible };
}

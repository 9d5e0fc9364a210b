//! The admin-token pieces that the API's bearer check (`http`) and the dashboard's login
//! share: comparing a presented token with a configured one, and the name of the token a
//! request was authorized with.

/// Equal-time comparison of two secrets (no early exit on the first differing byte).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin token a request was authorized with (its `name`), for `updated_by`.
#[derive(Debug, Clone)]
pub(crate) struct TokenName(pub(crate) String);

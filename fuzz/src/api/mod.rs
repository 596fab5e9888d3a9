//! `daemon/api/`: only the domain ↔ proto conversions (`convert`, `route_convert`), and the one private helper of
//! `daemon/api/mod.rs` that they call.

#[allow(dead_code)]
#[path = "../../../daemon/api/convert.rs"]
pub mod convert;

#[allow(dead_code)]
#[path = "../../../daemon/api/route_convert.rs"]
pub mod route_convert;

/// Stands in for `daemon/api/mod.rs`'s `store_status`, which `convert::read_objective`
/// calls (no target reaches it).
fn store_status(e: crate::store::StoreError) -> tonic::Status {
    tonic::Status::internal(format!("store error: {e}"))
}

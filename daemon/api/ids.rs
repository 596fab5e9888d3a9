//! Short ids: every call that takes an objective id takes a unique prefix of one (4+
//! characters, any case), or `last` / `-` for the caller's newest objective. One
//! resolution, used by every such call, so orchctl and any other client agree. A prefix
//! only matches objectives the caller may act on (their own; every one for root and the
//! daemon's user), so it never reveals another user's objective; a full id is taken as it
//! is (reads of another user's objective by its full id work as before).

use tonic::Status;

use super::{Api, store_status};
use crate::engine::Caller;
use crate::model::Objective;

/// The shortest prefix taken.
pub const MIN_PREFIX: usize = 4;
/// The length of a full id (a ULID).
const FULL_ID: usize = 26;
/// Candidates named when a prefix is ambiguous.
const SHOWN: usize = 10;

/// What an id argument means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdArg {
    /// `last` or `-`: the caller's newest objective.
    Last,
    /// A full id or a prefix, upper-cased (ULIDs are case-insensitive Crockford base32).
    Text(String),
}

/// Reads an id argument; refuses an empty one.
pub fn parse(raw: &str) -> Result<IdArg, Status> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(Status::invalid_argument("id: missing (an objective id)"));
    }
    if t == "-" || t.eq_ignore_ascii_case("last") {
        return Ok(IdArg::Last);
    }
    Ok(IdArg::Text(t.to_ascii_uppercase()))
}

/// Whether `caller` may act on objectives owned by `owner` (see `machine::authorize`).
fn visible(caller: u32, own_uid: u32, owner: u32) -> bool {
    caller == 0 || caller == own_uid || caller == owner
}

/// The message for a prefix matching several objectives.
pub fn ambiguous(prefix: &str, candidates: &[Objective], more: bool) -> String {
    let mut lines = vec![format!("id prefix `{prefix}` is ambiguous; it matches:")];
    for o in candidates {
        lines.push(format!("  {}  {:<17}  {}", o.id, o.state.word(), o.name));
    }
    if more {
        lines.push("  ...".into());
    }
    lines.push("give more characters of the id".into());
    lines.join("\n")
}

impl Api {
    /// Resolves an id argument to one objective's full id for `who` (`None`: a call
    /// without credentials, which may only name a full id).
    pub(super) fn resolve(&self, who: Option<Caller>, raw: &str) -> Result<String, Status> {
        let own = crate::sys::effective_uid();
        let arg = parse(raw)?;
        let who = match (arg.clone(), who) {
            (IdArg::Text(id), _) if self.store.objective(&id).map_err(store_status)?.is_some() => {
                return Ok(id);
            }
            (_, Some(who)) => who,
            (IdArg::Last, None) => {
                return Err(Status::unauthenticated(
                    "`last` needs the caller's identity",
                ));
            }
            (IdArg::Text(id), None) => {
                return Err(Status::not_found(format!("no objective with id `{id}`")));
            }
        };
        match arg {
            IdArg::Last => self
                .store
                .newest(|o| o.owner_uid == who.uid)
                .map_err(store_status)?
                .map(|o| o.id)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "`{}`: you (uid {}) have no objectives",
                        raw.trim(),
                        who.uid
                    ))
                }),
            IdArg::Text(prefix) => {
                if prefix.len() >= FULL_ID {
                    return Err(Status::not_found(format!(
                        "no objective with id `{prefix}`"
                    )));
                }
                if prefix.chars().count() < MIN_PREFIX {
                    return Err(Status::invalid_argument(format!(
                        "id `{prefix}` is too short: give at least {MIN_PREFIX} characters of an \
                         objective id (or `last` for your newest)"
                    )));
                }
                let found = self
                    .store
                    .objectives_with_prefix(
                        &prefix,
                        |o| visible(who.uid, own, o.owner_uid),
                        SHOWN + 1,
                    )
                    .map_err(store_status)?;
                match found.as_slice() {
                    [] => Err(Status::not_found(format!(
                        "no objective with id or id prefix `{prefix}`"
                    ))),
                    [one] => Ok(one.id.clone()),
                    many => {
                        let more = many.len() > SHOWN;
                        Err(Status::invalid_argument(ambiguous(
                            &prefix,
                            &many[..many.len().min(SHOWN)],
                            more,
                        )))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_dash_and_case() {
        assert_eq!(parse(" - ").ok(), Some(IdArg::Last));
        assert_eq!(parse("LAST").ok(), Some(IdArg::Last));
        assert_eq!(parse("01jab").ok(), Some(IdArg::Text("01JAB".into())));
        let e = parse("  ").err().map(|s| s.code());
        assert_eq!(e, Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn only_what_the_caller_may_act_on_is_visible() {
        assert!(visible(0, 999, 1000));
        assert!(visible(999, 999, 1000));
        assert!(visible(1000, 999, 1000));
        assert!(!visible(1001, 999, 1000));
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_candidates() {
        let a = Objective::pending("01AAAAAAAAAAAAAAAAAAAAAAA1", 1, 0, 0);
        let b = Objective::pending("01AAAAAAAAAAAAAAAAAAAAAAA2", 1, 0, 0);
        let text = ambiguous("01AA", &[a, b], true);
        assert!(text.starts_with("id prefix `01AA` is ambiguous"), "{text}");
        assert!(text.contains("01AAAAAAAAAAAAAAAAAAAAAAA1"), "{text}");
        assert!(text.contains("01AAAAAAAAAAAAAAAAAAAAAAA2"), "{text}");
        assert!(text.contains("..."), "{text}");
    }
}

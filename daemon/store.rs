//! The durable store: the only module that imports sled. Typed trees (objectives, steps,
//! attempts, events, indexes, audit, meta), their key layouts and encodings, the schema
//! version, and atomic multi-tree writes. Values are JSON; keys sort the way they are read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::model::{Attempt, AuditEntry, Event, Millis, ObjState, Objective, Step, Usage};

/// The schema this build writes. Stores with a lower version are migrated on open;
/// a higher one is refused.
pub const SCHEMA_VERSION: u32 = 1;

const META_SCHEMA: &[u8] = b"schema_version";
/// sled's page cache. sled counts only part of what a cached page costs: with 16 MiB
/// here orchd's heap held about 70 MiB after 3,500 objectives (`cargo bench --bench orch
/// -- targets`). The engine keeps live state itself; the store is read for history.
const CACHE_BYTES: u64 = 2 << 20;
const META_LAST_SEQ: &[u8] = b"last_seq";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "the store at {path} is locked by another process (is another orchd running with this state directory?)"
    )]
    Locked { path: PathBuf },
    #[error(
        "the store at {path} has schema version {found}, newer than this orchd supports ({supported}); run a newer orchd or use another state directory"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "the store at {path} is being reopened after a write error (a full disk?); try again in a moment"
    )]
    Closed { path: PathBuf },
    #[error("the store at {path} is still in use and cannot be reopened yet")]
    Busy { path: PathBuf },
    #[error("store i/o: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot make the store durable: {0}")]
    Sync(String),
    #[error("corrupt record under key {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The trees, in the order used by `WriteSet` operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    Objectives = 0,
    Steps = 1,
    Attempts = 2,
    Events = 3,
    ObjEvents = 4,
    ByState = 5,
    Requests = 6,
    Audit = 7,
    Meta = 8,
    Usage = 9,
}

const TREE_NAMES: [&str; 10] = [
    "objectives",
    "steps",
    "attempts",
    "events",
    "objective_events",
    "objectives_by_state",
    "request_ids",
    "audit",
    "meta",
    "usage_totals",
];

/// The durable store. Cheap to clone (every clone shares one open database, which
/// `reopen` replaces for all of them).
#[derive(Clone)]
pub struct Store {
    /// The open database; `None` while `reopen` is between closing and opening it.
    slot: Arc<RwLock<Option<Arc<Db>>>>,
    /// The last audit entry's key.
    audit_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    path: PathBuf,
}

/// One open sled database and its trees.
struct Db {
    db: sled::Db,
    trees: [sled::Tree; 10],
}

impl Db {
    fn open(dir: &Path) -> Result<Db> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // sled's default page cache is 1 GiB: memory would grow with history (and
            // every fork would copy larger page tables). Live state is in the engine.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(e) if e.to_string().contains("lock") => StoreError::Locked {
                    path: dir.to_path_buf(),
                },
                _ => StoreError::Open {
                    path: dir.to_path_buf(),
                    source,
                },
            })?;
        let open = |name: &str| db.open_tree(name);
        let trees = [
            open(TREE_NAMES[0])?,
            open(TREE_NAMES[1])?,
            open(TREE_NAMES[2])?,
            open(TREE_NAMES[3])?,
            open(TREE_NAMES[4])?,
            open(TREE_NAMES[5])?,
            open(TREE_NAMES[6])?,
            open(TREE_NAMES[7])?,
            open(TREE_NAMES[8])?,
            open(TREE_NAMES[9])?,
        ];
        Ok(Db { db, trees })
    }
}

/// A set of writes applied atomically by `Store::write`.
#[derive(Debug, Default)]
pub struct WriteSet {
    ops: Vec<(T, Vec<u8>, Option<Vec<u8>>)>,
    last_seq: Option<u64>,
}

/// `fdatasync` of a file (`data`) or `fsync` of a directory, through a descriptor of our
/// own: Linux writes back an inode's dirty pages whichever descriptor wrote them, so this
/// covers what sled wrote through its own.
fn sync(path: &Path, data: bool) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    if data { f.sync_data() } else { f.sync_all() }
}

fn json<V: serde::Serialize>(v: &V) -> Vec<u8> {
    // Serializing these plain data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

fn step_key(objective_id: &str, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(objective_id.len() + 5);
    k.extend_from_slice(objective_id.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn attempt_key(objective_id: &str, index: u32, number: u32) -> Vec<u8> {
    let mut k = step_key(objective_id, index);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

fn prefix(objective_id: &str) -> Vec<u8> {
    let mut k = objective_id.as_bytes().to_vec();
    k.push(b'/');
    k
}

fn state_key(state: ObjState, id: &str) -> Vec<u8> {
    format!("{}/{id}", state.word()).into_bytes()
}

fn obj_event_key(objective_id: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(objective_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn request_key(uid: u32, request_id: &str) -> Vec<u8> {
    let mut k = uid.to_be_bytes().to_vec();
    k.extend_from_slice(request_id.as_bytes());
    k
}

impl WriteSet {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends every write of `other`.
    pub fn extend(&mut self, other: WriteSet) {
        self.ops.extend(other.ops);
        if let Some(seq) = other.last_seq {
            self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
        }
    }

    fn put(&mut self, t: T, k: Vec<u8>, v: Vec<u8>) {
        self.ops.push((t, k, Some(v)));
    }

    fn del(&mut self, t: T, k: Vec<u8>) {
        self.ops.push((t, k, None));
    }

    /// Writes an objective; `previous` is its state as last stored (None when new),
    /// so the by-state index moves with it.
    pub fn objective(&mut self, o: &Objective, previous: Option<ObjState>) {
        if let Some(p) = previous
            && p != o.state
        {
            self.del(T::ByState, state_key(p, &o.id));
        }
        if previous != Some(o.state) {
            self.put(T::ByState, state_key(o.state, &o.id), Vec::new());
        }
        self.put(T::Objectives, o.id.as_bytes().to_vec(), json(o));
    }

    pub fn step(&mut self, s: &Step) {
        self.put(T::Steps, step_key(&s.objective_id, s.index), json(s));
    }

    pub fn attempt(&mut self, a: &Attempt) {
        self.put(
            T::Attempts,
            attempt_key(&a.objective_id, a.step_index, a.number),
            json(a),
        );
    }

    /// Appends an event that is not indexed under its objective (the objective is being
    /// removed in the same write: only the global history keeps the event).
    pub fn event_unindexed(&mut self, e: &Event) {
        self.put(T::Events, e.seq.to_be_bytes().to_vec(), json(e));
        self.last_seq = Some(self.last_seq.map_or(e.seq, |s| s.max(e.seq)));
    }

    /// Appends an event; its `seq` must be above every stored one.
    pub fn event(&mut self, e: &Event) {
        self.put(T::Events, e.seq.to_be_bytes().to_vec(), json(e));
        if !e.objective_id.is_empty() {
            self.put(
                T::ObjEvents,
                obj_event_key(&e.objective_id, e.seq),
                Vec::new(),
            );
        }
        self.last_seq = Some(self.last_seq.map_or(e.seq, |s| s.max(e.seq)));
    }

    pub fn request_id(&mut self, uid: u32, request_id: &str, objective_id: &str) {
        self.put(
            T::Requests,
            request_key(uid, request_id),
            objective_id.as_bytes().to_vec(),
        );
    }

    /// Sets a usage total (`day:2026-11-21`, `month:2026-11`, `total`).
    pub fn usage_total(&mut self, key: &str, u: &Usage) {
        self.put(T::Usage, key.as_bytes().to_vec(), json(u));
    }

    /// Sets an agent profile's aggregate (`engine::stats`), kept beside the usage totals
    /// under `stats:NAME`.
    pub fn agent_stats<V: serde::Serialize>(&mut self, agent: &str, v: &V) {
        self.put(T::Usage, format!("stats:{agent}").into_bytes(), json(v));
    }

    /// Sets (or, with `None`, clears) an agent profile's switch (`engine::routing`: off
    /// by a user, a usage limit or a cool-down), kept beside the stats as `switch:NAME`.
    pub fn agent_switch<V: serde::Serialize>(&mut self, agent: &str, v: Option<&V>) {
        let key = format!("switch:{agent}").into_bytes();
        match v {
            Some(v) => self.put(T::Usage, key, json(v)),
            None => self.del(T::Usage, key),
        }
    }

    /// Records that something happened once (e.g. a daemon-wide budget alert was sent).
    pub fn marker(&mut self, key: &str) {
        self.put(
            T::Usage,
            format!("marker:{key}").into_bytes(),
            b"{}".to_vec(),
        );
    }

    /// Appends an audit entry under `seq` (from `Store::next_audit_seq`: keys keep the order
    /// of the calls, even within one millisecond).
    pub fn audit(&mut self, seq: u64, entry: &AuditEntry) {
        self.put(T::Audit, seq.to_be_bytes().to_vec(), json(entry));
    }
}

impl Store {
    /// The deletes that remove an ended objective with its steps, attempts, events and
    /// request id (the audit trail is kept: it is append-only).
    pub fn removal(&self, o: &Objective) -> Result<WriteSet> {
        let mut w = WriteSet::default();
        let p = prefix(&o.id);
        for t in [T::Steps, T::Attempts] {
            for k in self.tree(t)?.scan_prefix(&p).keys() {
                w.del(t, k?.to_vec());
            }
        }
        for k in self.tree(T::ObjEvents)?.scan_prefix(&p).keys() {
            let k = k?;
            w.del(T::Events, k[k.len() - 8..].to_vec());
            w.del(T::ObjEvents, k.to_vec());
        }
        if !o.request_id.is_empty() {
            w.del(T::Requests, request_key(o.owner_uid, &o.request_id));
        }
        w.del(T::ByState, state_key(o.state, &o.id));
        w.del(T::Objectives, o.id.as_bytes().to_vec());
        Ok(w)
    }

    /// Ended objectives, oldest first, while `keep_going` says so.
    pub fn ended_oldest_first(
        &self,
        mut keep_going: impl FnMut(&Objective) -> bool,
    ) -> Result<Vec<Objective>> {
        let mut out = Vec::new();
        for state in [ObjState::Succeeded, ObjState::Failed, ObjState::Cancelled] {
            for id in self.ids_in_state(state)? {
                if let Some(o) = self.objective(&id)? {
                    out.push(o);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let n = out.iter().take_while(|o| keep_going(o)).count();
        out.truncate(n);
        Ok(out)
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, checks and migrates its schema.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = Db::open(dir)?;
        let last_audit = db.trees[T::Audit as usize]
            .last()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let store = Store {
            audit_seq: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(last_audit)),
            slot: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path: dir.to_path_buf(),
        };
        store.check_schema()?;
        // The store's files must stay reachable after a power cut: their directory
        // entries are made durable too.
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            if let Err(e) = sync(d, false) {
                tracing::warn!(error = %e, "cannot make the store's directory durable");
            }
        }
        Ok(store)
    }

    /// Closes the database and opens it again: after an I/O error (a full disk) sled
    /// refuses every write until it is reopened. What was not flushed before the error
    /// is gone from the reopened store; the caller writes it again. Fails with `Busy`
    /// while a reader still holds the old database (then nothing changed: try later), or
    /// with the open's error (then the store stays closed until a later call opens it).
    pub fn reopen(&self) -> Result<()> {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.take() {
            match Arc::try_unwrap(db) {
                // Dropped here: sled's flusher thread is joined and its lock released.
                Ok(db) => drop(db),
                Err(shared) => {
                    *slot = Some(shared);
                    return Err(StoreError::Busy {
                        path: self.path.clone(),
                    });
                }
            }
        }
        // A tree handle a reader took just before may keep sled's lock a moment longer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let db = loop {
            match Db::open(&self.path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => break r?,
            }
        };
        *slot = Some(Arc::new(db));
        Ok(())
    }

    fn db(&self) -> Result<Arc<Db>> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Closed {
                path: self.path.clone(),
            })
    }

    fn tree(&self, t: T) -> Result<sled::Tree> {
        Ok(self.db()?.trees[t as usize].clone())
    }

    fn check_schema(&self) -> Result<()> {
        let meta = self.tree(T::Meta)?;
        let found = match meta.get(META_SCHEMA)? {
            Some(v) => {
                let mut b = [0u8; 4];
                if v.len() == 4 {
                    b.copy_from_slice(&v);
                }
                u32::from_be_bytes(b)
            }
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            // Version 0 is a store created before any version was written: nothing to migrate.
            if found > 0 {
                tracing::info!(from = found, to = SCHEMA_VERSION, "migrating store schema");
            }
            meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            self.db()?.db.flush()?;
        }
        Ok(())
    }

    /// Overwrites the schema version (tests of the refusal path use this).
    #[cfg(test)]
    pub fn set_schema_version_for_test(&self, v: u32) -> Result<()> {
        self.tree(T::Meta)?.insert(META_SCHEMA, &v.to_be_bytes())?;
        self.db()?.db.flush()?;
        Ok(())
    }

    /// The key of the next audit entry.
    pub fn next_audit_seq(&self) -> u64 {
        self.audit_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// The highest event sequence number ever stored (0 when none).
    pub fn last_seq(&self) -> Result<u64> {
        let from_meta = self
            .tree(T::Meta)?
            .get(META_LAST_SEQ)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let from_events = self
            .tree(T::Events)?
            .last()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok(from_meta.max(from_events))
    }

    /// Applies every write of `w` atomically (one transaction over all trees). Not yet
    /// durable: call `flush` before acknowledging anything that depends on it.
    pub fn write(&self, w: &WriteSet) -> Result<()> {
        if w.ops.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        let t = &db.trees;
        let res: std::result::Result<(), TransactionError<()>> = (
            &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7], &t[8], &t[9],
        )
            .transaction(|(a, b, c, d, e, f, g, h, i, j)| {
                let views = [a, b, c, d, e, f, g, h, i, j];
                for (tree, k, v) in &w.ops {
                    let view = views[*tree as usize];
                    match v {
                        Some(v) => view.insert(k.as_slice(), v.as_slice())?,
                        None => view.remove(k.as_slice())?,
                    };
                }
                if let Some(seq) = w.last_seq {
                    views[T::Meta as usize].insert(META_LAST_SEQ, &seq.to_be_bytes())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match res {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
            Err(TransactionError::Abort(())) => Ok(()),
        }
    }

    /// Makes every write so far durable (one flush covers them all: group commit). sled's
    /// flush writes its log with `sync_file_range`, which neither flushes the drive's
    /// write cache nor the file's metadata (a grown file's size): an `fdatasync` of the
    /// log follows, so what is acknowledged after this survives a power cut.
    pub async fn flush(&self) -> Result<()> {
        let db = self.db()?;
        db.db.flush_async().await?;
        // Inline: sled has just written the data (`sync_file_range` waits for it), so
        // what is left is the metadata and the drive's cache flush.
        let log = self.path.join("db");
        sync(&log, true).map_err(|e| StoreError::Sync(format!("{}: {e}", log.display())))
    }

    /// Synchronous flush, for shutdown paths.
    pub fn flush_blocking(&self) -> Result<()> {
        self.db()?.db.flush()?;
        let log = self.path.join("db");
        sync(&log, true).map_err(|e| StoreError::Sync(format!("{}: {e}", log.display())))
    }

    fn decode<V: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<V> {
        serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }

    pub fn objective(&self, id: &str) -> Result<Option<Objective>> {
        match self.tree(T::Objectives)?.get(id.as_bytes())? {
            Some(v) => Ok(Some(Self::decode(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// The steps of an objective, in plan order.
    pub fn steps(&self, objective_id: &str) -> Result<Vec<Step>> {
        self.tree(T::Steps)?
            .scan_prefix(prefix(objective_id))
            .map(|r| {
                let (k, v) = r?;
                Self::decode(&k, &v)
            })
            .collect()
    }

    /// Every attempt of an objective, by step (plan order) then number.
    pub fn attempts(&self, objective_id: &str) -> Result<Vec<Attempt>> {
        self.tree(T::Attempts)?
            .scan_prefix(prefix(objective_id))
            .map(|r| {
                let (k, v) = r?;
                Self::decode(&k, &v)
            })
            .collect()
    }

    /// One attempt.
    pub fn attempt(&self, objective_id: &str, index: u32, number: u32) -> Result<Option<Attempt>> {
        let k = attempt_key(objective_id, index, number);
        match self.tree(T::Attempts)?.get(&k)? {
            Some(v) => Ok(Some(Self::decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Objectives newest first, optionally only in `state`; `limit` 0 = all.
    pub fn list(&self, state: Option<ObjState>, limit: usize) -> Result<Vec<Objective>> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out = Vec::new();
        match state {
            Some(s) => {
                let p = format!("{}/", s.word()).into_bytes();
                for r in self.tree(T::ByState)?.scan_prefix(&p).rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, _) = r?;
                    let id = String::from_utf8_lossy(&k[p.len()..]).into_owned();
                    if let Some(o) = self.objective(&id)? {
                        out.push(o);
                    }
                }
            }
            None => {
                for r in self.tree(T::Objectives)?.iter().rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, v) = r?;
                    out.push(Self::decode(&k, &v)?);
                }
            }
        }
        Ok(out)
    }

    /// Objectives whose id starts with `prefix` and that `keep` accepts, oldest first, at
    /// most `max`. A range scan over the prefix: the cost grows with the ids sharing it,
    /// not with every stored objective.
    pub fn objectives_with_prefix(
        &self,
        prefix: &str,
        mut keep: impl FnMut(&Objective) -> bool,
        max: usize,
    ) -> Result<Vec<Objective>> {
        let mut out = Vec::new();
        for r in self.tree(T::Objectives)?.scan_prefix(prefix.as_bytes()) {
            if out.len() >= max {
                break;
            }
            let (k, v) = r?;
            let o: Objective = Self::decode(&k, &v)?;
            if keep(&o) {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// The newest objective `keep` accepts (ids sort by creation time).
    pub fn newest(&self, mut keep: impl FnMut(&Objective) -> bool) -> Result<Option<Objective>> {
        for r in self.tree(T::Objectives)?.iter().rev() {
            let (k, v) = r?;
            let o: Objective = Self::decode(&k, &v)?;
            if keep(&o) {
                return Ok(Some(o));
            }
        }
        Ok(None)
    }

    /// Ids of objectives in `state`, oldest first.
    pub fn ids_in_state(&self, state: ObjState) -> Result<Vec<String>> {
        let p = format!("{}/", state.word()).into_bytes();
        self.tree(T::ByState)?
            .scan_prefix(&p)
            .map(|r| {
                let (k, _) = r?;
                Ok(String::from_utf8_lossy(&k[p.len()..]).into_owned())
            })
            .collect()
    }

    /// Number of objectives by state.
    pub fn counts(&self) -> Result<BTreeMap<ObjState, u64>> {
        let mut out = BTreeMap::new();
        for s in ObjState::ALL {
            let p = format!("{}/", s.word()).into_bytes();
            let n = self.tree(T::ByState)?.scan_prefix(&p).keys().count() as u64;
            out.insert(s, n);
        }
        Ok(out)
    }

    /// The objective a request id was used for, if any.
    pub fn objective_for_request(&self, uid: u32, request_id: &str) -> Result<Option<String>> {
        Ok(self
            .tree(T::Requests)?
            .get(request_key(uid, request_id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Events with `seq >= from`, in order, at most `limit`.
    pub fn events_from(&self, from: u64, limit: usize) -> Result<Vec<Event>> {
        self.tree(T::Events)?
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                Self::decode(&k, &v)
            })
            .collect()
    }

    /// Events of one objective with `seq >= from`, in order, at most `limit`.
    pub fn objective_events_from(
        &self,
        objective_id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let start = obj_event_key(objective_id, from);
        let end = obj_event_key(objective_id, u64::MAX);
        let mut out = Vec::new();
        for r in self.tree(T::ObjEvents)?.range(start..=end).take(limit) {
            let (k, _) = r?;
            let seq_bytes = &k[k.len() - 8..];
            if let Some(v) = self.tree(T::Events)?.get(seq_bytes)? {
                out.push(Self::decode(seq_bytes, &v)?);
            }
        }
        Ok(out)
    }

    /// Audit entries, newest first, optionally of one objective.
    pub fn audit(&self, objective_id: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out = Vec::new();
        for r in self.tree(T::Audit)?.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = r?;
            let e: AuditEntry = Self::decode(&k, &v)?;
            if objective_id.is_none_or(|id| id == e.objective_id) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Whether `WriteSet::marker(key)` was stored.
    pub fn has_marker(&self, key: &str) -> Result<bool> {
        Ok(self
            .tree(T::Usage)?
            .contains_key(format!("marker:{key}").as_bytes())?)
    }

    /// Every agent profile's switch written by `WriteSet::agent_switch`.
    pub fn agent_switches<V: serde::de::DeserializeOwned>(&self) -> Result<Vec<(String, V)>> {
        let mut out = Vec::new();
        for r in self.tree(T::Usage)?.scan_prefix(b"switch:") {
            let (k, v) = r?;
            let name = String::from_utf8_lossy(&k[b"switch:".len()..]).into_owned();
            out.push((name, Self::decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Every agent profile's aggregate written by `WriteSet::agent_stats`.
    pub fn agent_stats<V: serde::de::DeserializeOwned>(&self) -> Result<Vec<(String, V)>> {
        let mut out = Vec::new();
        for r in self.tree(T::Usage)?.scan_prefix(b"stats:") {
            let (k, v) = r?;
            let name = String::from_utf8_lossy(&k[b"stats:".len()..]).into_owned();
            out.push((name, Self::decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Calls `f` with every stored attempt (once, to build aggregates a store written by
    /// an older orchd lacks).
    pub fn each_attempt(&self, mut f: impl FnMut(Attempt)) -> Result<()> {
        for r in self.tree(T::Attempts)?.iter() {
            let (k, v) = r?;
            f(Self::decode(&k, &v)?);
        }
        Ok(())
    }

    /// Usage events (`EventKind::Usage`) newest first, while `keep_going` says so (it is
    /// given each event's time).
    pub fn usage_events_newest_first(
        &self,
        mut keep_going: impl FnMut(Millis) -> bool,
    ) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for r in self.tree(T::Events)?.iter().rev() {
            let (k, v) = r?;
            let e: Event = Self::decode(&k, &v)?;
            if !keep_going(e.time_ms) {
                break;
            }
            if matches!(e.kind, crate::model::EventKind::Usage { .. }) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// A usage total (zero when none was recorded).
    pub fn usage_total(&self, key: &str) -> Result<Usage> {
        match self.tree(T::Usage)?.get(key.as_bytes())? {
            Some(v) => Self::decode(key.as_bytes(), &v),
            None => Ok(Usage::default()),
        }
    }

    fn thread_key(thread: &str) -> Vec<u8> {
        format!("thread:{thread}").into_bytes()
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db()
            .ok()
            .and_then(|d| d.db.size_on_disk().ok())
            .unwrap_or(0)
    }
}

/// Agent threads' running totals, beside the usage totals (`thread:ID`). Written as the
/// agent reports them, outside the engine's write sets: a total lost in a crash before
/// the next flush is at worst counted again, as it would have been without it.
impl crate::runner::ThreadTotals for Store {
    fn get(&self, thread: &str) -> Option<Usage> {
        let key = Self::thread_key(thread);
        match self.tree(T::Usage).and_then(|t| Ok(t.get(&key)?)) {
            Ok(Some(v)) => Self::decode(&key, &v).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(thread, error = %e, "cannot read a thread's total");
                None
            }
        }
    }

    fn put(&self, thread: &str, total: &Usage) {
        let key = Self::thread_key(thread);
        let mut keep = self.get(thread).unwrap_or_default();
        keep.input_tokens = keep.input_tokens.max(total.input_tokens);
        keep.cache_read_tokens = keep.cache_read_tokens.max(total.cache_read_tokens);
        keep.cache_write_tokens = keep.cache_write_tokens.max(total.cache_write_tokens);
        keep.output_tokens = keep.output_tokens.max(total.output_tokens);
        if let Err(e) = self
            .tree(T::Usage)
            .and_then(|t| Ok(t.insert(key, json(&keep))?))
        {
            tracing::warn!(thread, error = %e, "cannot keep a thread's total");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a store a test has just dropped: sled's background flusher may hold its lock
    /// for a moment after the drop (it offers nothing to wait on), so `Locked` is retried
    /// for up to 5 s; any other error, or a lock held longer, fails.
    fn reopen(path: &std::path::Path) -> Result<Store> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                r => return r,
            }
        }
    }
    use crate::model::{Budget, EventKind};

    fn objective(id: &str, state: ObjState) -> Objective {
        Objective {
            id: id.into(),
            name: "n".into(),
            goal: String::new(),
            priority: 0,
            budget: Budget::default(),
            state,
            created_ms: 1,
            updated_ms: 1,
            message: String::new(),
            owner_uid: 0,
            owner_gid: 0,
            request_id: String::new(),
            usage: Usage::default(),
            client_env: None,
            step_count: 1,
            ended_seq: None,
            alerts: Vec::new(),
            parent: None,
            children: Vec::new(),
            sub_usage: Usage::default(),
            planner: None,
        }
    }

    #[test]
    fn state_index_follows_objective() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let mut w = WriteSet::default();
        let mut a = objective("01A", ObjState::Pending);
        w.objective(&a, None);
        w.objective(&objective("01B", ObjState::Pending), None);
        s.write(&w).unwrap();
        let mut w = WriteSet::default();
        a.state = ObjState::Succeeded;
        w.objective(&a, Some(ObjState::Pending));
        s.write(&w).unwrap();
        assert_eq!(s.ids_in_state(ObjState::Pending).unwrap(), vec!["01B"]);
        assert_eq!(s.ids_in_state(ObjState::Succeeded).unwrap(), vec!["01A"]);
        let ids: Vec<String> = s.list(None, 0).unwrap().into_iter().map(|o| o.id).collect();
        assert_eq!(ids, vec!["01B", "01A"]);
        assert_eq!(s.list(None, 1).unwrap().len(), 1);
        assert_eq!(s.counts().unwrap()[&ObjState::Succeeded], 1);
    }

    #[test]
    fn prefix_scans_and_the_newest_by_owner() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let mut w = WriteSet::default();
        for (id, owner) in [("01AB1", 1), ("01AB2", 2), ("01AC3", 1), ("02ZZ4", 2)] {
            let mut o = objective(id, ObjState::Succeeded);
            o.owner_uid = owner;
            w.objective(&o, None);
        }
        s.write(&w).unwrap();
        let ids = |v: Vec<Objective>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
        assert_eq!(
            ids(s.objectives_with_prefix("01AB", |_| true, 10).unwrap()),
            ["01AB1", "01AB2"]
        );
        assert_eq!(
            ids(s
                .objectives_with_prefix("01A", |o| o.owner_uid == 1, 10)
                .unwrap()),
            ["01AB1", "01AC3"]
        );
        assert_eq!(
            s.objectives_with_prefix("01", |_| true, 2).unwrap().len(),
            2
        );
        assert!(
            s.objectives_with_prefix("03", |_| true, 10)
                .unwrap()
                .is_empty()
        );
        let newest = |uid: u32| s.newest(|o| o.owner_uid == uid).unwrap().map(|o| o.id);
        assert_eq!(newest(1).as_deref(), Some("01AC3"));
        assert_eq!(newest(2).as_deref(), Some("02ZZ4"));
        assert_eq!(newest(3), None);
    }

    #[test]
    fn an_unindexed_event_is_in_the_history_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let mut w = WriteSet::default();
        w.event_unindexed(&Event {
            seq: 1,
            time_ms: 0,
            objective_id: "GONE".into(),
            step_id: String::new(),
            attempt: 0,
            kind: EventKind::ObjectiveRemoved {
                by_uid: 0,
                state: ObjState::Failed,
            },
        });
        s.write(&w).unwrap();
        assert_eq!(s.events_from(0, 10).unwrap().len(), 1);
        assert!(s.objective_events_from("GONE", 0, 10).unwrap().is_empty());
        assert_eq!(s.last_seq().unwrap(), 1);
    }

    #[test]
    fn events_and_seq_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let s = Store::open(&path).unwrap();
            let mut w = WriteSet::default();
            for seq in 1..=3 {
                w.event(&Event {
                    seq,
                    time_ms: 0,
                    objective_id: if seq == 2 { "X".into() } else { "Y".into() },
                    step_id: String::new(),
                    attempt: 0,
                    kind: EventKind::ApprovalRequested,
                });
            }
            s.write(&w).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = reopen(&path).unwrap();
        assert_eq!(s.last_seq().unwrap(), 3);
        assert_eq!(s.events_from(2, 10).unwrap().len(), 2);
        let x = s.objective_events_from("X", 0, 10).unwrap();
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].seq, 2);
    }

    #[test]
    fn newer_schema_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let s = Store::open(&path).unwrap();
            s.set_schema_version_for_test(SCHEMA_VERSION + 1).unwrap();
        }
        let err = reopen(&path).err().expect("must refuse");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{msg}"
        );
        assert!(msg.contains(&format!("({SCHEMA_VERSION})")), "{msg}");
    }

    #[test]
    fn removal_deletes_everything_of_the_objective_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let mut w = WriteSet::default();
        let mut gone = objective("01A", ObjState::Succeeded);
        gone.request_id = "r".into();
        w.objective(&gone, None);
        w.request_id(0, "r", "01A");
        w.objective(&objective("01B", ObjState::Failed), None);
        for (seq, id) in [(1, "01A"), (2, "01B"), (3, "01A")] {
            w.event(&Event {
                seq,
                time_ms: 0,
                objective_id: id.into(),
                step_id: String::new(),
                attempt: 0,
                kind: EventKind::ApprovalRequested,
            });
        }
        s.write(&w).unwrap();
        s.write(&s.removal(&gone).unwrap()).unwrap();
        assert!(s.objective("01A").unwrap().is_none());
        assert!(s.objective("01B").unwrap().is_some());
        let seqs: Vec<u64> = s
            .events_from(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![2]);
        assert_eq!(s.objective_for_request(0, "r").unwrap(), None);
        assert_eq!(
            s.ids_in_state(ObjState::Succeeded).unwrap(),
            Vec::<String>::new()
        );
        // Sequence numbers never go back after removals.
        assert_eq!(s.last_seq().unwrap(), 3);
        let old: Vec<String> = s
            .ended_oldest_first(|_| true)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(old, vec!["01B"]);
    }

    #[test]
    fn reopen_keeps_what_was_flushed_and_waits_for_readers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let other = s.clone();
        let mut w = WriteSet::default();
        w.objective(&objective("01A", ObjState::Pending), None);
        s.write(&w).unwrap();
        s.flush_blocking().unwrap();
        // A reader still holds the database: nothing changes, try later.
        let held = s.db().unwrap();
        assert!(matches!(s.reopen(), Err(StoreError::Busy { .. })));
        assert!(other.objective("01A").unwrap().is_some());
        drop(held);
        s.reopen().unwrap();
        // Every clone sees the reopened database, with what was flushed.
        assert!(other.objective("01A").unwrap().is_some());
        let mut w = WriteSet::default();
        w.objective(&objective("01B", ObjState::Pending), None);
        other.write(&w).unwrap();
        assert!(s.objective("01B").unwrap().is_some());
    }

    #[test]
    fn request_ids_are_per_uid() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let mut w = WriteSet::default();
        w.request_id(1000, "k", "01X");
        s.write(&w).unwrap();
        assert_eq!(
            s.objective_for_request(1000, "k").unwrap().as_deref(),
            Some("01X")
        );
        assert_eq!(s.objective_for_request(1001, "k").unwrap(), None);
    }
}

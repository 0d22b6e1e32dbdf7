//! What each pipeline knows per namespace: the Secret with its name there, reduced to the few
//! facts reconcile reads, which version of it we know to hold the data its fingerprint names,
//! and the namespace's state.
//!
//! That is kept per namespace per pipeline, so its size is what memory grows by with
//! resources x namespaces. A reflector store would keep each Secret's whole metadata (about
//! 2 KiB); the first summary here kept strings, with the written versions and the states in
//! maps of their own, one set per pipeline (about 500 bytes in all). It is now a 32-byte slot:
//! the resourceVersion and the fingerprint as 64-bit digests (compared for equality only), the
//! token's expiry to the second, the trusted version, flags, the state and the pipeline's id, in
//! one row per namespace that every pipeline shares ([`Table`]).

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::core::meta::{
    EXPIRES_ANNOTATION, FINGERPRINT_ANNOTATION, NAMESPACE_STATES, edited_by_someone_else, ours,
    state_index,
};
use crate::core::names;
use crate::core::render::Rendered;

/// A 64-bit digest of a string we only compare for equality (a resourceVersion, a
/// fingerprint annotation). A collision would need 2^32 distinct values in one namespace's
/// history; none of these values is secret, and a copied annotation is caught by the data check
/// whatever its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(NonZeroU64);

impl Digest {
    pub fn of(value: &str) -> Digest {
        // SipHash with fixed keys: the same digest in every process, for tests and logs alike.
        let mut hasher = std::hash::DefaultHasher::new();
        value.hash(&mut hasher);
        Digest(NonZeroU64::new(hasher.finish()).unwrap_or(NonZeroU64::MIN))
    }
}

/// What reconcile needs to know of the Secret with our name in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedSecret {
    /// Which version: each write gets a new resourceVersion, so equal digests mean the same
    /// version of the same object.
    pub version: Option<Digest>,
    /// Ours by [`ours`]: our managed-by label set by our field manager, and the owner label of
    /// this configuration. Else it is someone else's Secret, or another resource's.
    pub managed: bool,
    /// Our fingerprint annotation: which config it holds.
    pub fingerprint: Option<Digest>,
    /// Another field manager owns the config key: its data was edited.
    pub edited_elsewhere: bool,
    /// Our expiry annotation: when the token it holds expires (to the second).
    pub expires_at: Option<SystemTime>,
}

impl CachedSecret {
    pub fn from_meta(meta: &ObjectMeta, owner: Option<&str>) -> CachedSecret {
        CachedSecret {
            version: meta.resource_version.as_deref().map(Digest::of),
            managed: ours(meta, owner),
            fingerprint: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(FINGERPRINT_ANNOTATION))
                .map(|f| Digest::of(f)),
            edited_elsewhere: edited_by_someone_else(meta),
            expires_at: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(EXPIRES_ANNOTATION))
                .and_then(|e| humantime::parse_rfc3339_weak(e.trim()).ok()),
        }
    }

    /// Whether its fingerprint annotation names `fingerprint`.
    pub fn names_config(&self, fingerprint: &str) -> bool {
        self.fingerprint == Some(Digest::of(fingerprint))
    }
}

const SEEN: u8 = 1;
const MANAGED: u8 = 2;
const EDITED: u8 = 4;
/// Seen by the (re)list in progress.
const LISTED: u8 = 8;
const NO_STATE: u8 = u8::MAX;

/// One namespace's entry, 32 bytes: the Secret as last seen (by the watch, or returned by our
/// write), the version of it whose data we know to match its fingerprint (we wrote it, or read
/// it and hashed the data), and the namespace's state. Any version other than the trusted one
/// has its data checked before it is trusted, because its metadata, our label and fingerprint
/// included, can be copied by anyone who may create a Secret there.
#[derive(Debug, Clone, Copy)]
struct Slot {
    version: Option<Digest>,
    fingerprint: Option<Digest>,
    trusted: Option<Digest>,
    /// The expiry annotation in seconds since 1970 (0: none or unreadable).
    expires: u32,
    flags: u8,
    /// Index into `NAMESPACE_STATES`, or `NO_STATE`.
    state: u8,
    /// Whose slot it is (see [`Table`]).
    pipeline: u16,
}

impl Slot {
    fn new(pipeline: u16) -> Slot {
        Slot {
            pipeline,
            version: None,
            fingerprint: None,
            trusted: None,
            expires: 0,
            flags: 0,
            state: NO_STATE,
        }
    }

    fn seen(&self) -> Option<CachedSecret> {
        (self.flags & SEEN != 0).then_some(CachedSecret {
            version: self.version,
            managed: self.flags & MANAGED != 0,
            fingerprint: self.fingerprint,
            edited_elsewhere: self.flags & EDITED != 0,
            expires_at: (self.expires > 0)
                .then(|| UNIX_EPOCH + Duration::from_secs(u64::from(self.expires))),
        })
    }

    fn see(&mut self, secret: CachedSecret) {
        self.version = secret.version;
        self.fingerprint = secret.fingerprint;
        self.expires = secret.expires_at.map_or(0, |e| {
            let seconds = e.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            u32::try_from(seconds).unwrap_or(u32::MAX)
        });
        self.flags = SEEN
            | (self.flags & LISTED)
            | if secret.managed { MANAGED } else { 0 }
            | if secret.edited_elsewhere { EDITED } else { 0 };
    }

    /// The Secret is gone, and the trust in its version with it.
    fn unsee(&mut self) {
        self.version = None;
        self.fingerprint = None;
        self.trusted = None;
        self.expires = 0;
        self.flags = 0;
    }

    fn is_empty(&self) -> bool {
        self.flags & SEEN == 0 && self.trusted.is_none() && self.state == NO_STATE
    }
}

/// The table every pipeline of the controller shares: a row per namespace, a 32-byte slot in
/// it per pipeline that keeps something there, the row's name shared (`core::names`). One row
/// instead of an entry per pipeline: the hash table's key, bucket and spare capacity are paid
/// once per namespace, not once per namespace per pipeline.
#[derive(Clone, Default)]
pub struct Table(Arc<RwLock<Rows>>);

#[derive(Default)]
struct Rows {
    rows: HashMap<Arc<str>, Box<[Slot]>>,
    /// The ids of the pipelines that have joined and not left.
    pipelines: BTreeSet<u16>,
}

impl Rows {
    fn slot(&self, namespace: &str, pipeline: u16) -> Option<&Slot> {
        self.rows
            .get(namespace)?
            .iter()
            .find(|s| s.pipeline == pipeline)
    }

    /// Drops `pipeline`'s slots for which `empty` holds, and rows left without a slot.
    fn sweep(&mut self, pipeline: u16, empty: impl Fn(&Slot) -> bool) {
        self.rows.retain(|_, row| {
            if row.iter().any(|s| s.pipeline == pipeline && empty(s)) {
                *row = row
                    .iter()
                    .filter(|s| !(s.pipeline == pipeline && empty(s)))
                    .copied()
                    .collect();
            }
            !row.is_empty()
        });
    }
}

/// A pipeline's place in the table: its slots and id go when its last handle is dropped.
struct Member {
    table: Table,
    id: u16,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut rows = self.table.0.write().expect("table lock");
        rows.sweep(self.id, |_| true);
        rows.pipelines.remove(&self.id);
    }
}

/// One pipeline's view of the [`Table`]: written by its Secret watch, read by its reconciles
/// (which also record what they wrote and verified, and the namespace's state).
#[derive(Clone)]
pub struct SecretCache {
    member: Arc<Member>,
    ready: Arc<watch::Sender<bool>>,
    /// The EcrPullSecret whose Secrets count as ours; `None` for the flag-configured controller.
    owner: Option<Arc<str>>,
}

impl Default for SecretCache {
    fn default() -> Self {
        SecretCache::for_owner(None)
    }
}

impl SecretCache {
    /// A cache in a table of its own (tests, tools).
    pub fn for_owner(owner: Option<&str>) -> SecretCache {
        SecretCache::join(&Table::default(), owner).expect("a new table has room")
    }

    /// The view of pipeline `owner` into the controller's shared `table`. Fails only with
    /// 65,536 pipelines running at once.
    pub fn join(table: &Table, owner: Option<&str>) -> Result<SecretCache, crate::Error> {
        let id = {
            let mut rows = table.0.write().expect("table lock");
            let id = (0..=u16::MAX)
                .find(|id| !rows.pipelines.contains(id))
                .ok_or_else(|| {
                    crate::Error::Config(
                        "65,536 pipelines are already running in this controller; delete \
                         EcrPullSecrets that are not needed"
                            .into(),
                    )
                })?;
            rows.pipelines.insert(id);
            id
        };
        Ok(SecretCache {
            member: Arc::new(Member {
                table: table.clone(),
                id,
            }),
            ready: Arc::new(watch::channel(false).0),
            owner: owner.map(Arc::from),
        })
    }

    fn id(&self) -> u16 {
        self.member.id
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rows> {
        self.member.table.0.read().expect("table lock")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rows> {
        self.member.table.0.write().expect("table lock")
    }

    /// Changes this pipeline's slot for `namespace`, created if missing, dropped if left empty.
    fn update<T>(&self, namespace: &str, change: impl FnOnce(&mut Slot) -> T) -> T {
        let id = self.id();
        let mut rows = self.write();
        let Some(row) = rows.rows.get_mut(namespace) else {
            let mut slot = Slot::new(id);
            let result = change(&mut slot);
            if !slot.is_empty() {
                rows.rows.insert(names::intern(namespace), Box::new([slot]));
            }
            return result;
        };
        let (result, keep) = match row.iter().position(|s| s.pipeline == id) {
            Some(i) => {
                let result = change(&mut row[i]);
                if row[i].is_empty() {
                    let mut slots = std::mem::take(row).into_vec();
                    slots.swap_remove(i);
                    *row = slots.into_boxed_slice();
                }
                (result, !row.is_empty())
            }
            None => {
                let mut slot = Slot::new(id);
                let result = change(&mut slot);
                if !slot.is_empty() {
                    let mut slots = std::mem::take(row).into_vec();
                    slots.push(slot);
                    *row = slots.into_boxed_slice();
                }
                (result, true)
            }
        };
        if !keep {
            rows.rows.remove(namespace);
        }
        result
    }

    /// Our Secret in `namespace`, as last seen.
    pub fn get(&self, namespace: &str) -> Option<CachedSecret> {
        self.read().slot(namespace, self.id())?.seen()
    }

    /// Whether `secret` (as [`get`](Self::get) returned it) is a version whose data we know.
    pub fn trusted(&self, namespace: &str, secret: &CachedSecret) -> bool {
        secret.version.is_some()
            && self
                .read()
                .slot(namespace, self.id())
                .is_some_and(|slot| slot.trusted == secret.version)
    }

    /// We wrote (force-applied, as our field manager) the config `rendered`, and the
    /// API server answered with `meta`: that version is ours and its data is ours. The watch
    /// event that follows says the same; one that is older (a change the watch had not
    /// delivered yet) makes the next reconcile check again.
    pub fn wrote(&self, namespace: &str, meta: &ObjectMeta, rendered: &Rendered) {
        let version = meta.resource_version.as_deref().map(Digest::of);
        self.update(namespace, |slot| {
            slot.see(CachedSecret {
                version,
                managed: true,
                fingerprint: Some(Digest::of(&rendered.fingerprint)),
                edited_elsewhere: false,
                expires_at: Some(rendered.expires_at),
            });
            slot.trusted = version;
        });
    }

    /// We read version `version` of the Secret in `namespace` and its data matches its
    /// fingerprint. From a list (`listed`), only if the cache shows that version or none: a
    /// write of ours that the list raced with stays trusted.
    pub fn verified(&self, namespace: &str, version: Digest, listed: bool) {
        self.update(namespace, |slot| {
            if !listed || slot.flags & SEEN == 0 || slot.version == Some(version) {
                slot.trusted = Some(version);
            }
        });
    }

    /// Whatever version `namespace` holds is checked again before it is trusted.
    pub fn distrust(&self, namespace: &str) {
        self.update(namespace, |slot| slot.trusted = None);
    }

    /// Records `namespace`'s state (`None` forgets it); returns the previous one.
    pub fn set_state(&self, namespace: &str, state: Option<&'static str>) -> Option<&'static str> {
        let index = state.and_then(state_index).unwrap_or(NO_STATE);
        let previous = self.update(namespace, |slot| std::mem::replace(&mut slot.state, index));
        NAMESPACE_STATES.get(usize::from(previous)).copied()
    }

    /// Namespaces with a Secret of our name.
    pub fn len(&self) -> usize {
        let id = self.id();
        self.read()
            .rows
            .values()
            .flat_map(|row| row.iter())
            .filter(|slot| slot.pipeline == id && slot.flags & SEEN != 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Folds one watch event in, with a reflector's semantics: after a (re)list, a Secret the
    /// list did not return is gone. A version trusted before stays trusted when the list
    /// returns it again; a deleted Secret takes its trust with it. States are kept.
    pub fn apply_watcher_event(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let owner = self.owner.as_deref();
        fn summary<'s>(
            secret: &'s PartialObjectMeta<Secret>,
            owner: Option<&str>,
        ) -> Option<(&'s str, CachedSecret)> {
            let namespace = secret.metadata.namespace.as_deref()?;
            Some((namespace, CachedSecret::from_meta(&secret.metadata, owner)))
        }
        match event {
            watcher::Event::Init => {
                let id = self.id();
                for row in self.write().rows.values_mut() {
                    for slot in row.iter_mut().filter(|s| s.pipeline == id) {
                        slot.flags &= !LISTED;
                    }
                }
            }
            watcher::Event::InitApply(secret) => {
                if let Some((namespace, seen)) = summary(secret, owner) {
                    self.update(namespace, |slot| {
                        slot.see(seen);
                        slot.flags |= LISTED;
                    });
                }
            }
            watcher::Event::InitDone => {
                let id = self.id();
                let mut rows = self.write();
                for row in rows.rows.values_mut() {
                    for slot in row.iter_mut().filter(|s| s.pipeline == id) {
                        if slot.flags & LISTED == 0 {
                            slot.unsee();
                        }
                        slot.flags &= !LISTED;
                    }
                }
                rows.sweep(id, Slot::is_empty);
                drop(rows);
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(secret) => {
                if let Some((namespace, seen)) = summary(secret, owner) {
                    self.update(namespace, |slot| slot.see(seen));
                }
            }
            watcher::Event::Delete(secret) => {
                // A deleted Secret must be rewritten, not taken for "written, cache lagging".
                if let Some(namespace) = secret.metadata.namespace.as_deref() {
                    self.update(namespace, Slot::unsee);
                }
            }
        }
    }

    /// Marks the cache complete without a watch (tests that fill it by hand).
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::meta::{FIELD_MANAGER, MANAGED_LABEL, MANAGED_VALUE};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use std::collections::BTreeMap;

    fn secret(namespace: &str, rv: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some("ecr-pull-secret".into()),
                namespace: Some(namespace.into()),
                uid: Some(format!("uid-{namespace}")),
                resource_version: Some(rv.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_LABEL.to_string(),
                    MANAGED_VALUE.to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    FINGERPRINT_ANNOTATION.to_string(),
                    "abc".to_string(),
                )])),
                // Our field manager set our label: server-side apply records it.
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some(FIELD_MANAGER.into()),
                    operation: Some("Apply".into()),
                    fields_v1: Some(FieldsV1(serde_json::json!({
                        "f:metadata": {"f:labels": {format!("f:{MANAGED_LABEL}"): {}}}
                    }))),
                    ..ManagedFieldsEntry::default()
                }]),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    #[test]
    fn follows_watch_events_and_relists() {
        let cache = SecretCache::default();
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(secret("a", "1")));
        cache.apply_watcher_event(&watcher::Event::InitApply(secret("b", "1")));
        cache.apply_watcher_event(&watcher::Event::InitDone);
        let a = cache.get("a").unwrap();
        assert!(a.managed);
        assert!(a.names_config("abc"));
        cache.verified("a", Digest::of("1"), false);
        assert!(cache.trusted("a", &a));
        cache.apply_watcher_event(&watcher::Event::Apply(secret("a", "2")));
        let a2 = cache.get("a").unwrap();
        assert_eq!(a2.version, Some(Digest::of("2")));
        assert!(!cache.trusted("a", &a2), "another version is checked again");
        cache.apply_watcher_event(&watcher::Event::Delete(secret("b", "1")));
        assert!(cache.get("b").is_none());
        // A relist after a disconnect replaces everything: "a" was deleted meanwhile.
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(secret("c", "5")));
        cache.apply_watcher_event(&watcher::Event::InitDone);
        assert!(cache.get("a").is_none());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn states_outlive_the_secret() {
        let cache = SecretCache::default();
        assert_eq!(cache.set_state("a", Some("synced")), None);
        cache.apply_watcher_event(&watcher::Event::Apply(secret("a", "1")));
        cache.apply_watcher_event(&watcher::Event::Delete(secret("a", "1")));
        assert!(cache.get("a").is_none());
        assert_eq!(cache.set_state("a", Some("failed")), Some("synced"));
        // A relist that does not find its Secret keeps the state too.
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(cache.set_state("a", None), Some("failed"));
        assert_eq!(cache.set_state("a", None), None);
        assert!(cache.read().rows.is_empty(), "an empty entry is dropped");
    }

    #[test]
    fn trust_follows_the_version() {
        let cache = SecretCache::default();
        cache.apply_watcher_event(&watcher::Event::Apply(secret("a", "1")));
        // Our write returned version 2: trusted before the watch shows it.
        let expires_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let rendered = Rendered {
            config: Vec::new(),
            fingerprint: "abc".into(),
            hosts: Vec::new(),
            expires_at,
            issued: String::new(),
            credentials: String::new(),
        };
        cache.wrote("a", &secret("a", "2").metadata, &rendered);
        let written = cache.get("a").unwrap();
        assert_eq!(written.version, Some(Digest::of("2")));
        assert!(written.managed && written.names_config("abc"));
        assert_eq!(written.expires_at, Some(expires_at));
        assert!(cache.trusted("a", &written));
        // A list that saw version 1 does not take the trust from our write.
        cache.verified("a", Digest::of("1"), true);
        assert!(cache.trusted("a", &written));
        // A relist keeps the trust of the version it finds again.
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(secret("a", "2")));
        cache.apply_watcher_event(&watcher::Event::InitDone);
        assert!(cache.trusted("a", &cache.get("a").unwrap()));
        cache.distrust("a");
        assert!(!cache.trusted("a", &cache.get("a").unwrap()));
        // A deleted Secret takes its trust with it.
        cache.verified("a", Digest::of("2"), false);
        cache.apply_watcher_event(&watcher::Event::Delete(secret("a", "2")));
        cache.apply_watcher_event(&watcher::Event::Apply(secret("a", "2")));
        assert!(!cache.trusted("a", &cache.get("a").unwrap()));
    }

    #[test]
    fn a_slot_is_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn pipelines_share_rows_and_leave_nothing_behind() {
        let table = Table::default();
        let a = SecretCache::join(&table, None).unwrap();
        let b = SecretCache::join(&table, Some("team-b")).unwrap();
        a.apply_watcher_event(&watcher::Event::Apply(secret("x", "1")));
        b.set_state("x", Some("conflict"));
        b.set_state("y", Some("synced"));
        assert!(a.get("x").unwrap().managed);
        // Not b's: its owner label is missing. Each pipeline sees its own slot only.
        assert!(b.get("x").is_none());
        assert_eq!(a.set_state("y", None), None);
        assert_eq!(
            table.0.read().unwrap().rows.len(),
            2,
            "one row per namespace"
        );
        assert_eq!(table.0.read().unwrap().rows["x"].len(), 2);
        // A relist of b's Secrets removes none of a's.
        b.apply_watcher_event(&watcher::Event::Init);
        b.apply_watcher_event(&watcher::Event::InitDone);
        assert!(a.get("x").is_some());
        drop(b);
        let rows = table.0.read().unwrap();
        assert_eq!(rows.rows.len(), 1, "b's row for y is gone with b");
        assert_eq!(rows.rows["x"].len(), 1);
        assert_eq!(rows.pipelines.len(), 1);
    }

    #[tokio::test]
    async fn ready_after_the_first_list() {
        let cache = SecretCache::default();
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.wait_until_ready().await }
        });
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}

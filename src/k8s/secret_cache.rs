//! The cache of our pull secrets, per namespace, reduced to the few facts reconcile reads.
//!
//! A reflector store would keep each Secret's whole metadata (label and annotation maps,
//! managedFields, an `ObjectRef` key): about 2 KiB per namespace, the largest share of the
//! controller's memory on clusters with thousands of namespaces. This keeps about 200 bytes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::core::meta::{FINGERPRINT_ANNOTATION, edited_by_someone_else, ours};

/// What reconcile needs to know of the Secret with our name in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedSecret {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Ours by [`ours`]: our managed-by label set by our field manager, and the owner label of
    /// this configuration. Else it is someone else's Secret, or another resource's.
    pub managed: bool,
    /// Our fingerprint annotation: which config it holds.
    pub fingerprint: Option<Box<str>>,
    /// Another field manager owns the config key: its data was edited.
    pub edited_elsewhere: bool,
}

impl CachedSecret {
    pub fn from_meta(meta: &ObjectMeta, owner: Option<&str>) -> CachedSecret {
        CachedSecret {
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            managed: ours(meta, owner),
            fingerprint: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(FINGERPRINT_ANNOTATION))
                .map(|f| f.as_str().into()),
            edited_elsewhere: edited_by_someone_else(meta),
        }
    }
}

type Entries = HashMap<Box<str>, Arc<CachedSecret>>;

#[derive(Default)]
struct Inner {
    live: Entries,
    /// A (re)list in progress: it replaces `live` when complete, so deletions missed while
    /// disconnected disappear.
    relist: Option<Entries>,
}

/// Shared by the Secret watch (writer) and every reconcile (readers).
#[derive(Clone)]
pub struct SecretCache {
    inner: Arc<RwLock<Inner>>,
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
    pub fn for_owner(owner: Option<&str>) -> SecretCache {
        SecretCache {
            inner: Arc::default(),
            ready: Arc::new(watch::channel(false).0),
            owner: owner.map(Arc::from),
        }
    }

    /// Our Secret in `namespace`, as last seen.
    pub fn get(&self, namespace: &str) -> Option<Arc<CachedSecret>> {
        self.inner
            .read()
            .expect("secret cache lock")
            .live
            .get(namespace)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("secret cache lock").live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Folds one watch event in, with a reflector's semantics.
    pub fn apply_watcher_event(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let entry = |secret: &PartialObjectMeta<Secret>| {
            let namespace = secret.metadata.namespace.as_deref()?;
            Some((
                Box::<str>::from(namespace),
                Arc::new(CachedSecret::from_meta(
                    &secret.metadata,
                    self.owner.as_deref(),
                )),
            ))
        };
        let mut inner = self.inner.write().expect("secret cache lock");
        match event {
            watcher::Event::Init => inner.relist = Some(Entries::new()),
            watcher::Event::InitApply(secret) => {
                if let Some((namespace, cached)) = entry(secret) {
                    inner
                        .relist
                        .get_or_insert_with(Entries::new)
                        .insert(namespace, cached);
                }
            }
            watcher::Event::InitDone => {
                if let Some(mut relist) = inner.relist.take() {
                    relist.shrink_to_fit();
                    inner.live = relist;
                }
                drop(inner);
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(secret) => {
                if let Some((namespace, cached)) = entry(secret) {
                    inner.live.insert(namespace, cached);
                }
            }
            watcher::Event::Delete(secret) => {
                if let Some(namespace) = secret.metadata.namespace.as_deref() {
                    inner.live.remove(namespace);
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
        assert!(cache.get("a").is_none(), "not live before InitDone");
        cache.apply_watcher_event(&watcher::Event::InitDone);
        let a = cache.get("a").unwrap();
        assert!(a.managed);
        assert_eq!(a.fingerprint.as_deref(), Some("abc"));
        assert_eq!(a.uid.as_deref(), Some("uid-a"));
        cache.apply_watcher_event(&watcher::Event::Apply(secret("a", "2")));
        assert_eq!(
            cache.get("a").unwrap().resource_version.as_deref(),
            Some("2")
        );
        cache.apply_watcher_event(&watcher::Event::Delete(secret("b", "1")));
        assert!(cache.get("b").is_none());
        // A relist after a disconnect replaces everything: "a" was deleted meanwhile.
        cache.apply_watcher_event(&watcher::Event::Init);
        cache.apply_watcher_event(&watcher::Event::InitApply(secret("c", "5")));
        cache.apply_watcher_event(&watcher::Event::InitDone);
        assert!(cache.get("a").is_none());
        assert_eq!(cache.len(), 1);
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

//! One metadata watch of Namespaces for the whole controller: a cache every pipeline reads and
//! events every pipeline subscribes to. Before, each pipeline (the flags, every EcrPullSecret)
//! ran its own watch and cache of every namespace: K pipelines cost K watches, K initial lists
//! and K copies of the cache.

use std::sync::Arc;

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::broadcast;

use crate::core::meta::slim_namespace;
use crate::core::names;

/// Events a pipeline may miss without harm: a subscriber that falls this far behind gets
/// `Lagged` and re-checks every namespace instead.
const EVENTS_BUFFER: usize = 4096;

/// What changed, for subscribers; the namespace itself is read from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceEvent {
    /// Created or changed.
    Applied(Arc<str>),
    /// Gone: its per-namespace state must go too.
    Deleted { name: Arc<str>, uid: Option<String> },
    /// A complete (re)list replaced the cache: any namespace may have changed, or gone.
    Listed,
}

/// The shared cache and its event feed. Cheap to clone.
#[derive(Clone)]
pub struct Namespaces {
    store: Store<PartialObjectMeta<Namespace>>,
    events: broadcast::Sender<NamespaceEvent>,
}

impl Namespaces {
    /// The cache and the watch that fills it; the watch runs (retrying with backoff) until the
    /// returned future is dropped. `keep_labels`: whether any selection may read labels.
    pub fn watch(
        client: Client,
        keep_labels: bool,
        on_error: impl Fn(&watcher::Error) + Send + 'static,
    ) -> (Namespaces, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let (events, _) = broadcast::channel(EVENTS_BUFFER);
        let listed = store.clone();
        let namespaces = Namespaces {
            store,
            events: events.clone(),
        };
        // Metadata only: labels, annotations and deletion state are all selection needs.
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let watch = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(move |ns| slim_namespace(ns, keep_labels))
            .reflect(writer)
            .for_each(move |event| {
                let event = match event {
                    Ok(watcher::Event::Apply(ns)) => {
                        Some(NamespaceEvent::Applied(names::intern(&ns.name_any())))
                    }
                    Ok(watcher::Event::Delete(ns)) => {
                        let name = names::intern(&ns.name_any());
                        names::release(&name);
                        Some(NamespaceEvent::Deleted {
                            name,
                            uid: ns.uid(),
                        })
                    }
                    // One event for a whole list, not one per namespace in it.
                    Ok(watcher::Event::InitDone) => {
                        names::retain(|name| listed.get(&ObjectRef::new(name)).is_some());
                        Some(NamespaceEvent::Listed)
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
                    Err(error) => {
                        on_error(&error);
                        None
                    }
                };
                if let Some(event) = event {
                    // No subscriber (no pipeline running yet) is fine: they start from the cache.
                    let _ = events.send(event);
                }
                std::future::ready(())
            });
        (namespaces, watch)
    }

    /// The cache, for the Controller of each pipeline.
    pub fn store(&self) -> Store<PartialObjectMeta<Namespace>> {
        self.store.clone()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NamespaceEvent> {
        self.events.subscribe()
    }
}

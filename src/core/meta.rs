//! What marks a Secret as ours, and the names we write: labels, annotations, field manager.
//! Pure predicates over object metadata, shared by the controller, `status` and `cleanup`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PartialObjectMeta;

/// Label with the EcrPullSecret that owns a Secret (absent: the flag-configured secret).
pub const OWNER_LABEL: &str = "ecr-pull-secrets.io/owner";
/// Namespace annotation that opts a namespace out (value "true", case-insensitive).
/// The label the API server sets on every namespace, to its name.
pub(crate) const NAME_LABEL: &str = "kubernetes.io/metadata.name";
pub(crate) const OPT_OUT_ANNOTATION: &str = "ecr-pull-secrets.io/exclude";

/// Field manager of every write (server-side apply).
pub(crate) const FIELD_MANAGER: &str = "ecr-pull-secrets";
/// Label on every Secret we manage; a same-named Secret without it is someone else's.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_VALUE: &str = "ecr-pull-secrets";
/// Hash of the rendered config (never the token itself): unchanged writes are skipped.
pub const FINGERPRINT_ANNOTATION: &str = "ecr-pull-secrets.io/fingerprint";
pub(crate) const EXPIRES_ANNOTATION: &str = "ecr-pull-secrets.io/expires-at";
pub(crate) const REGISTRIES_ANNOTATION: &str = "ecr-pull-secrets.io/registries";
/// When each token in the config was fetched and expires: what a new leader needs to adopt them.
pub(crate) const ISSUED_ANNOTATION: &str = "ecr-pull-secrets.io/issued";
/// A one-way tag of the credentials and role that fetched the tokens (`core::adopt`).
pub(crate) const CREDENTIALS_ANNOTATION: &str = "ecr-pull-secrets.io/credentials";

/// The states a namespace's pull secret can be in, as the `ecr_pull_secrets_namespaces` gauge
/// and a resource's status count them. Kept per namespace as an index into this list (one
/// byte), since that is kept per namespace per pipeline.
pub const NAMESPACE_STATES: [&str; 6] = [
    "synced", "failed", "excluded", "conflict", "pending", "expired",
];

/// `state`'s index in [`NAMESPACE_STATES`].
pub(crate) fn state_index(state: &str) -> Option<u8> {
    NAMESPACE_STATES
        .iter()
        .position(|s| *s == state)
        .map(|i| i as u8)
}
pub(crate) const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
pub(crate) const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// Labels a resource's Secrets carry besides the managed-by label.
pub(crate) fn owner_labels(owner: Option<&str>) -> BTreeMap<String, String> {
    owner
        .map(|o| BTreeMap::from([(OWNER_LABEL.to_string(), o.to_string())]))
        .unwrap_or_default()
}

/// The EcrPullSecret that owns a Secret (`None`: written by the flag-configured controller).
pub(crate) fn owner_of(meta: &ObjectMeta) -> Option<&str> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(OWNER_LABEL))
        .map(String::as_str)
}

pub(crate) fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_LABEL))
        .is_some_and(|v| v == MANAGED_VALUE)
}

/// Our field manager set the managed-by label: server-side apply records it in managedFields.
/// A label alone can be copied by anyone who may create a Secret; a Secret created with our
/// label by someone else (kubectl, another tool) lacks this entry and is never overwritten or
/// deleted.
pub(crate) fn labelled_by_us(meta: &ObjectMeta) -> bool {
    meta.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:metadata")
                    .and_then(|m| m.get("f:labels"))
                    .and_then(|l| l.get(format!("f:{MANAGED_LABEL}")))
                    .is_some()
            })
    })
}

/// The one definition of "our Secret" for a configuration (`owner`: the EcrPullSecret, `None`
/// for the flag-configured secret), shared by the controller, `status` and `cleanup`: our
/// managed label, set by our field manager, and this configuration's owner label.
pub fn ours(meta: &ObjectMeta, owner: Option<&str>) -> bool {
    is_managed(meta) && owner_of(meta) == owner && labelled_by_us(meta)
}

/// Another field manager owns our config key: someone edited the data. Visible in metadata, so
/// drift is caught without reading Secret contents.
pub(crate) fn edited_by_someone_else(meta: &ObjectMeta) -> bool {
    meta.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() != Some(FIELD_MANAGER)
            && entry.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:data")
                    .and_then(|d| d.get(format!("f:{DOCKER_CONFIG_KEY}")))
                    .is_some()
            })
    })
}

/// Trims a cached namespace to what selection reads (name, labels when a label selector is
/// configured, the opt-out annotation, deletion state): managedFields and other annotations (a
/// `last-applied-configuration` can be kilobytes) would otherwise dominate the cache on
/// clusters with many namespaces.
pub(crate) fn slim_namespace(ns: &mut PartialObjectMeta<Namespace>, keep_labels: bool) {
    // apiVersion and kind are the same for every object (two allocations each).
    ns.types = None;
    let meta = &mut ns.metadata;
    meta.managed_fields = None;
    // The watch keeps its own resourceVersion; nothing here reads the object's.
    meta.resource_version = None;
    if !keep_labels {
        meta.labels = None;
    }
    // The API server sets this label on every namespace to its name: kept, it would be a
    // map of its own per namespace (about 500 bytes). Selection puts it back when matching.
    if let Some(labels) = meta.labels.as_mut() {
        labels.remove(NAME_LABEL);
        if labels.is_empty() {
            meta.labels = None;
        }
    }
    meta.owner_references = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == OPT_OUT_ANNOTATION);
    }
}

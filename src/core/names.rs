//! Kubernetes object names: the one DNS label and DNS subdomain check every parser uses, and
//! the one copy of each namespace name that every pipeline's per-namespace state keys on.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

/// RFC 1123 label: 1 to 63 of a-z, 0-9 and '-', starting and ending alphanumeric (namespace
/// names).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels (Secret, ServiceAccount
/// and Lease names, label-key prefixes).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Namespace names in use. Each pipeline keeps state per namespace (its Secret's summary, the
/// namespace's state); with 20 EcrPullSecrets over 10,000 namespaces a copy of the name in each
/// entry cost more than the entry itself, so every entry shares this one.
static NAMES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Mutex::default);

/// The shared copy of namespace name `name`.
pub(crate) fn intern(name: &str) -> Arc<str> {
    let mut names = NAMES.lock().expect("names lock");
    if let Some(shared) = names.get(name) {
        return shared.clone();
    }
    let shared: Arc<str> = Arc::from(name);
    names.insert(shared.clone());
    shared
}

/// Namespace `name` is gone: later entries get a new copy (those holding this one keep it).
pub(crate) fn release(name: &str) {
    NAMES.lock().expect("names lock").remove(name);
}

/// Keeps only the names `live` says exist (after a namespace relist: deletions missed while
/// the watch was down).
pub(crate) fn retain(live: impl Fn(&str) -> bool) {
    let mut names = NAMES.lock().expect("names lock");
    names.retain(|name| live(name));
    names.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name() {
        let a = intern("names-test-a");
        assert!(Arc::ptr_eq(&a, &intern("names-test-a")));
        release("names-test-a");
        let again = intern("names-test-a");
        assert!(!Arc::ptr_eq(&a, &again), "a released name is copied anew");
        assert_eq!(&*a, &*again);
        retain(|n| n != "names-test-a");
        assert!(!Arc::ptr_eq(&again, &intern("names-test-a")));
    }

    #[test]
    fn names() {
        for ok in ["a", "ecr-pull-secret", "a.b-c.d", "0x"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a_b",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(!is_dns_label("a.b"));
    }
}

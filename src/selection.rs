//! Which namespaces get the pull secret.

use std::collections::BTreeSet;

/// Namespace selection: an optional allow-list (`--target-namespaces`) and a deny-list
/// (`--exclude-namespaces`); exclusion wins. Terminating namespaces are never written to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    target: Option<BTreeSet<String>>,
    exclude: BTreeSet<String>,
}

impl Selection {
    pub fn new(target: &[String], exclude: &[String]) -> Selection {
        let set = |names: &[String]| -> BTreeSet<String> {
            names
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        };
        let target = set(target);
        Selection {
            target: (!target.is_empty()).then_some(target),
            exclude: set(exclude),
        }
    }

    /// Whether namespace `name` should hold the secret.
    pub fn selects(&self, name: &str, terminating: bool) -> bool {
        if terminating || self.exclude.contains(name) {
            return false;
        }
        self.target.as_ref().is_none_or(|t| t.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        s.split(',').map(str::to_string).collect()
    }

    #[test]
    fn selection_table() {
        // (target, exclude, namespace, terminating, selected)
        let cases = [
            ("", "", "default", false, true),
            ("", "", "default", true, false),
            ("", "kube-system,kube-public", "kube-system", false, false),
            ("", "kube-system,kube-public", "team-a", false, true),
            ("team-a,team-b", "", "team-a", false, true),
            ("team-a,team-b", "", "team-c", false, false),
            ("team-a,team-b", "team-b", "team-b", false, false),
            (" team-a , ", "", "team-a", false, true),
            (" , ", "", "anything", false, true),
        ];
        for (target, exclude, ns, terminating, expected) in cases {
            let selection = Selection::new(&names(target), &names(exclude));
            assert_eq!(
                selection.selects(ns, terminating),
                expected,
                "target={target:?} exclude={exclude:?} ns={ns} terminating={terminating}"
            );
        }
    }
}

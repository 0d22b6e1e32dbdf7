//! Which ServiceAccounts get our secret, and our entry in an `imagePullSecrets` list. Pure:
//! the patching is `k8s::service_account`.

use std::collections::BTreeSet;
use std::str::FromStr;

use k8s_openapi::api::core::v1::LocalObjectReference;

use crate::core::names::is_dns_subdomain;

/// Which ServiceAccounts get our secret in `imagePullSecrets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These names in every selected namespace (e.g. `default`).
    Names(BTreeSet<String>),
    /// Every ServiceAccount.
    All,
}

impl Targets {
    pub(crate) fn matches(&self, name: &str) -> bool {
        match self {
            Targets::Names(names) => names.contains(name),
            Targets::All => true,
        }
    }
}

impl FromStr for Targets {
    type Err = String;

    /// `*` for all, else a comma list of names (`default`, `default,builder`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let names: BTreeSet<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.contains("*") {
            return if names.len() == 1 {
                Ok(Targets::All)
            } else {
                Err(format!(
                    "{s:?}: `*` (all ServiceAccounts) cannot be combined with names"
                ))
            };
        }
        if names.is_empty() {
            return Err(format!(
                "{s:?}: name ServiceAccounts (e.g. default or default,builder) or use * for all"
            ));
        }
        for name in &names {
            if !is_dns_subdomain(name) {
                return Err(format!("{name:?} is not a valid ServiceAccount name"));
            }
        }
        Ok(Targets::Names(names))
    }
}

/// The list with our entry present or absent, or `None` when it already is as wanted. Order
/// and every other entry are kept.
pub(crate) fn with_entry(
    list: Option<&[LocalObjectReference]>,
    secret: &str,
    present: bool,
) -> Option<Vec<LocalObjectReference>> {
    let list = list.unwrap_or_default();
    let has = list.iter().any(|r| r.name == secret);
    match (has, present) {
        (true, true) | (false, false) => None,
        (false, true) => {
            let mut new = list.to_vec();
            new.push(LocalObjectReference {
                name: secret.to_string(),
            });
            Some(new)
        }
        (true, false) => Some(list.iter().filter(|r| r.name != secret).cloned().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> Vec<LocalObjectReference> {
        names
            .iter()
            .map(|n| LocalObjectReference {
                name: n.to_string(),
            })
            .collect()
    }

    #[test]
    fn entry_table() {
        // (current list, present, expected new list or None)
        type Case<'a> = (Option<&'a [&'a str]>, bool, Option<&'a [&'a str]>);
        let cases: [Case; 8] = [
            (None, true, Some(&["ours"])),
            (None, false, None),
            (Some(&[]), true, Some(&["ours"])),
            (Some(&["a", "b"]), true, Some(&["a", "b", "ours"])),
            (Some(&["a", "ours", "b"]), true, None),
            (Some(&["a", "ours", "b"]), false, Some(&["a", "b"])),
            (Some(&["ours"]), false, Some(&[])),
            (Some(&["a", "b"]), false, None),
        ];
        for (current, present, expected) in cases {
            let current = current.map(refs);
            let got = with_entry(current.as_deref(), "ours", present);
            assert_eq!(got, expected.map(refs), "{current:?} present={present}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!("*".parse::<Targets>().unwrap(), Targets::All);
        let names = "default, builder".parse::<Targets>().unwrap();
        assert!(names.matches("default") && names.matches("builder") && !names.matches("other"));
        assert!(Targets::All.matches("anything"));
        for bad in ["", " , ", "*,default", "Default", "-x"] {
            assert!(bad.parse::<Targets>().is_err(), "{bad:?}");
        }
    }
}

//! Adding our pull secret to ServiceAccounts' `imagePullSecrets`, and removing it.
//!
//! The list is atomic (no merge key): any apply or merge patch replaces it whole. So: read,
//! change only our entry, patch carrying the resourceVersion read, and on 409 read again.
//! Another writer's entries are never dropped.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::reconcile::FIELD_MANAGER;

/// Which ServiceAccounts get our secret in `imagePullSecrets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These names in every selected namespace (e.g. `default`).
    Names(BTreeSet<String>),
    /// Every ServiceAccount.
    All,
}

impl Targets {
    pub fn matches(&self, name: &str) -> bool {
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
            let valid = name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !valid {
                return Err(format!("{name:?} is not a valid ServiceAccount name"));
            }
        }
        Ok(Targets::Names(names))
    }
}

/// The list with our entry present or absent, or `None` when it already is as wanted. Order
/// and every other entry are kept.
pub fn with_entry(
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

/// How many times a 409 (someone else wrote in between) is retried at once.
const CONFLICT_RETRIES: usize = 5;

/// Makes `sa` (as last read) carry our entry or not. Returns whether it wrote.
pub async fn set_entry(
    client: &Client,
    sa: ServiceAccount,
    secret: &str,
    present: bool,
    timeout: Duration,
    fence: &crate::leader::Fence,
) -> Result<bool, Error> {
    let namespace = sa.namespace().unwrap_or_default();
    let name = sa.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let context = || format!("ServiceAccount {namespace}/{name}");
    let bounded =
        |e: Result<Result<ServiceAccount, kube::Error>, tokio::time::error::Elapsed>| match e {
            Ok(Ok(sa)) => Ok(Ok(sa)),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 || status.code == 404 => {
                Ok(Err(status.code))
            }
            Ok(Err(source)) => Err(Error::Kube {
                context: context(),
                source,
            }),
            Err(_) => Err(Error::Timeout(format!(
                "{} took longer than {timeout:?}",
                context()
            ))),
        };
    let mut current = sa;
    for _ in 0..CONFLICT_RETRIES {
        let Some(list) = with_entry(current.image_pull_secrets.as_deref(), secret, present) else {
            return Ok(false);
        };
        // The resourceVersion makes the patch conditional: a concurrent writer gets us a 409.
        let patch = json!({
            "metadata": { "resourceVersion": current.resource_version() },
            "imagePullSecrets": list,
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        fence.check()?;
        let patched =
            tokio::time::timeout(timeout, api.patch(&name, &params, &Patch::Merge(&patch))).await;
        match bounded(patched)? {
            Ok(_) => {
                tracing::info!(
                    namespace,
                    service_account = name,
                    secret,
                    action = if present { "added" } else { "removed" },
                    "patched ServiceAccount imagePullSecrets"
                );
                return Ok(true);
            }
            Err(404) => return Ok(false),
            Err(_conflict) => match bounded(tokio::time::timeout(timeout, api.get(&name)).await)? {
                Ok(fresh) => current = fresh,
                Err(_) => return Ok(false),
            },
        }
    }
    Err(Error::Conflict(format!(
        "{} changed {CONFLICT_RETRIES} times while we patched it; retrying later",
        context()
    )))
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

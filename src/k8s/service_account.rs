//! Adding our pull secret to ServiceAccounts' `imagePullSecrets`, and removing it.
//!
//! The list is atomic (no merge key): any apply or merge patch replaces it whole. So: read,
//! change only our entry, patch carrying the resourceVersion read, and on 409 read again.
//! Another writer's entries are never dropped.

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;
use crate::core::api_failure::ApiFailure;
use crate::core::meta::FIELD_MANAGER;
use crate::k8s::client::call;

pub(crate) use crate::core::service_accounts::with_entry;

/// How many times a 409 (someone else wrote in between) is retried at once.
const CONFLICT_RETRIES: usize = 5;

/// Makes `sa` (as last read) carry our entry or not. Returns whether it wrote.
pub(crate) async fn set_entry(
    client: &Client,
    sa: ServiceAccount,
    secret: &str,
    present: bool,
    timeout: Duration,
    fence: &crate::k8s::leader::Fence,
) -> Result<bool, Error> {
    let namespace = sa.namespace().unwrap_or_default();
    let name = sa.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let what = || format!("patching ServiceAccount {namespace}/{name}");
    let mut current = sa;
    let mut attempt = 0;
    loop {
        attempt += 1;
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
        let patched = call(
            what,
            timeout,
            "",
            api.patch(&name, &params, &Patch::Merge(&patch)),
        )
        .await;
        match patched {
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
            Err(e) if e.api_failure() == Some(ApiFailure::NotFound) => return Ok(false),
            // Someone else kept writing it: retried later, with the last 409 as the cause.
            Err(Error::Kube {
                failure: ApiFailure::Conflict,
                source,
                ..
            }) if attempt == CONFLICT_RETRIES => {
                return Err(Error::Kube {
                    context: format!(
                        "ServiceAccount {namespace}/{name} changed {CONFLICT_RETRIES} times while we patched it; retrying later"
                    ),
                    failure: ApiFailure::Conflict,
                    source,
                });
            }
            Err(e) if e.api_failure() == Some(ApiFailure::Conflict) => {
                match call(what, timeout, "", api.get_opt(&name)).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

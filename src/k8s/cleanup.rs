//! Removing our Secrets and ServiceAccount entries: for `cleanup` and for a deleted
//! EcrPullSecret. Only Secrets with our name *and* our managed label are deleted.

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Preconditions};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::core::api_failure::ApiFailure;
use crate::core::meta::{MANAGED_LABEL, MANAGED_VALUE, labelled_by_us};
use crate::k8s::client::call;
use crate::k8s::service_account;

/// What cleanup found (and, unless dry-run, removed).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub secrets: Vec<String>,
    pub service_accounts: Vec<String>,
}

/// EcrPullSecret's owner label. Without `owner` every managed Secret of that name goes.
pub async fn remove(
    client: &Client,
    secret_name: &str,
    owner: Option<&str>,
    dry_run: bool,
    api_timeout: std::time::Duration,
    service_accounts: bool,
    fence: &crate::k8s::leader::Fence,
) -> Result<Report, Error> {
    let mut report = Report::default();

    // ServiceAccount entries first, so no ServiceAccount points at a removed Secret.
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let list = if service_accounts {
        call(
            || "listing ServiceAccounts".into(),
            api_timeout,
            "",
            accounts.list(&ListParams::default()),
        )
        .await?
        .items
    } else {
        Vec::new()
    };
    for sa in list {
        if service_account::with_entry(sa.image_pull_secrets.as_deref(), secret_name, false)
            .is_none()
        {
            continue;
        }
        report.service_accounts.push(format!(
            "{}/{}",
            sa.namespace().unwrap_or_default(),
            sa.name_any()
        ));
        if !dry_run {
            service_account::set_entry(client, sa, secret_name, false, api_timeout, fence).await?;
        }
    }

    let secrets: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
    let mut labels = format!("{MANAGED_LABEL}={MANAGED_VALUE}");
    if let Some(owner) = owner {
        labels.push_str(&format!(",{}={owner}", crate::core::crd::OWNER_LABEL));
    }
    let params = ListParams::default()
        .fields(&format!("metadata.name={secret_name}"))
        .labels(&labels);
    let list = call(
        || format!("listing managed Secrets {secret_name}"),
        api_timeout,
        "",
        secrets.list_metadata(&params),
    )
    .await?;
    // A Secret that merely carries our label (anyone may set it) is not ours to delete.
    for secret in list
        .items
        .into_iter()
        .filter(|s| labelled_by_us(&s.metadata))
    {
        let namespace = secret.namespace().unwrap_or_default();
        report
            .secrets
            .push(format!("{namespace}/{}", secret.name_any()));
        if dry_run {
            continue;
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        fence.check()?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let deleted = call(
            || format!("deleting Secret {namespace}/{}", secret.name_any()),
            api_timeout,
            "",
            api.delete(&secret.name_any(), &params),
        )
        .await;
        match deleted {
            Ok(_) => {}
            Err(e) if e.api_failure() == Some(ApiFailure::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

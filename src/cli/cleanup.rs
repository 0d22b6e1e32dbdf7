//! `ecr-pull-secrets cleanup`: removes every managed Secret and our ServiceAccount entries, for
//! uninstalling. Only Secrets with our name *and* our managed label are deleted.

use kube::Client;

use crate::Error;
use crate::cli::args::CleanupArgs;
use crate::k8s::cleanup::{Report, remove};
use crate::k8s::leader::Fence;

pub async fn cleanup(args: &CleanupArgs) -> Result<(), Error> {
    let client = crate::k8s::client::connect().await?;
    let report = cleanup_with(&client, args).await?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for secret in &report.secrets {
        println!("{verb} Secret {secret}");
    }
    for sa in &report.service_accounts {
        println!(
            "{verb} {} from ServiceAccount {sa}",
            args.secret.secret_name
        );
    }
    println!(
        "{verb} {} Secret(s) and {} ServiceAccount entr{}{}",
        report.secrets.len(),
        report.service_accounts.len(),
        if report.service_accounts.len() == 1 {
            "y"
        } else {
            "ies"
        },
        if args.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(())
}

pub(crate) async fn cleanup_with(client: &Client, args: &CleanupArgs) -> Result<Report, Error> {
    remove(
        client,
        &args.secret.secret_name,
        None,
        args.dry_run,
        args.client.api_timeout,
        true,
        // A one-shot command, not a leader: nothing to fence.
        &Fence::open(),
    )
    .await
}

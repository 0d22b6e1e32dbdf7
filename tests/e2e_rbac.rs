//! End to end: the shipped manifests apply, and the controller bound only by the shipped RBAC
//! (a token of the shipped ServiceAccount) does its job while it cannot touch any other Secret.
//! Run through `tests/testenv.sh run -- cargo test --test e2e_rbac -- --test-threads=1`.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{LocalObjectReference, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

/// The controller running as the shipped ServiceAccount, with the shipped namespace, Lease and
/// credentials Secret names, plus `args` and `env`; and that account's kubeconfig.
fn shipped_controller(
    env: &TestEnv,
    name: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> (Controller, std::path::PathBuf) {
    let kubeconfig = service_account_kubeconfig(&env.dir, "ecr-pull-secrets", "ecr-pull-secrets");
    let kubeconfig_text = kubeconfig.to_str().unwrap().to_string();
    let mut all_args = vec![
        "--namespace",
        "ecr-pull-secrets",
        "--credentials-secret",
        "aws-credentials",
        "--lease-name",
        "ecr-pull-secrets",
    ];
    all_args.extend_from_slice(args);
    let mut all_vars = vec![("KUBECONFIG", kubeconfig_text.as_str())];
    all_vars.extend_from_slice(vars);
    (
        env.controller_with_env(name, &all_args, &all_vars),
        kubeconfig,
    )
}

#[tokio::test]
async fn shipped_manifests_apply_and_their_rbac_is_enough_and_no_more() {
    let Some(env) = testenv() else { return };
    let admin = client().await;
    let deploy = repo().join("deploy");
    // The real namespace and RBAC; then every manifest of the base passes the API server's
    // validation (a server-side dry run needs the namespace to exist).
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        deploy.join("common.yaml").to_str().unwrap(),
    ]);
    kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-k",
        deploy.to_str().unwrap(),
    ]);
    put_credentials(
        &admin,
        "ecr-pull-secrets",
        "aws-credentials",
        "AKIATESTENV000000001",
        "x",
    )
    .await;
    let p = unique("rbac");
    let (a, b) = (format!("{p}-a"), format!("{p}-b"));
    create_namespace(&admin, &a).await;
    create_namespace(&admin, &b).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &a);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(vec![LocalObjectReference {
            name: "other".into(),
        }]),
        ..ServiceAccount::default()
    };
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    // Another Secret the controller must never be able to touch.
    let others: Api<Secret> = Api::namespaced(admin.clone(), &a);
    create_foreign_secret(&admin, &a, "not-ours", Default::default()).await;

    let (controller, kubeconfig) = shipped_controller(
        &env,
        &p,
        &[
            "--target-namespaces",
            &format!("{p}-*"),
            "--service-accounts",
            "default",
        ],
        &[],
    );
    // The core scenarios, bound only by the shipped roles.
    for ns in [&a, &b] {
        eventually(
            "the secret written under the shipped RBAC",
            Duration::from_secs(30),
            || async { get_secret(&admin, ns, "ecr-pull-secret").await },
        )
        .await;
    }
    eventually(
        "the ServiceAccount patched",
        Duration::from_secs(10),
        || async {
            let entries = accounts.get("default").await.ok()?.image_pull_secrets?;
            (entries.len() == 2).then_some(())
        },
    )
    .await;
    let api: Api<Secret> = Api::namespaced(admin.clone(), &a);
    api.delete("ecr-pull-secret", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted secret restored",
        Duration::from_secs(5),
        || async { get_secret(&admin, &a, "ecr-pull-secret").await },
    )
    .await;
    assert!(
        !controller.log_text().contains("forbidden"),
        "{}",
        controller.log_text()
    );

    // ... and no more: any other Secret is out of reach.
    let sa_client = client_from(&kubeconfig).await;
    let theirs: Api<Secret> = Api::namespaced(sa_client.clone(), &a);
    forbidden(theirs.get("not-ours").await, "get another Secret");
    forbidden(
        theirs.list(&ListParams::default()).await,
        "list Secrets without the name selector",
    );
    forbidden(
        theirs
            .list(&ListParams::default().fields("metadata.name=not-ours"))
            .await,
        "list another Secret by name",
    );
    forbidden(
        theirs
            .patch(
                "not-ours",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {}})),
            )
            .await,
        "patch another Secret",
    );
    forbidden(
        theirs.delete("not-ours", &DeleteParams::default()).await,
        "delete another Secret",
    );
    let everywhere: Api<Secret> = Api::all(sa_client);
    forbidden(
        everywhere.list(&ListParams::default()).await,
        "list Secrets cluster-wide",
    );
    assert!(
        others.get("not-ours").await.is_ok(),
        "the other Secret is untouched"
    );
    drop(controller);
    delete_namespaces(&admin, &[a, b]).await;
}

/// EcrPullSecret resources under the shipped RBAC: the CRD rules are enough to add and remove
/// the finalizer and write the status; a resource whose secretName the ClusterRole does not
/// name says so in its status.
#[tokio::test]
async fn resources_run_under_the_shipped_rbac_and_a_name_it_lacks_is_reported() {
    use ecr_pull_secrets::crd::EcrPullSecret;
    let Some(env) = testenv() else { return };
    let admin = client().await;
    let deploy = repo().join("deploy");
    install_crd();
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        deploy.join("common.yaml").to_str().unwrap(),
    ]);
    put_credentials(
        &admin,
        "ecr-pull-secrets",
        "aws-credentials",
        "AKIATESTENV000000001",
        "x",
    )
    .await;
    let p = unique("rbac-crd");
    let ns = format!("{p}-a");
    create_namespace(&admin, &ns).await;
    let api: Api<EcrPullSecret> = Api::all(admin.clone());
    let (allowed, denied) = (format!("{p}-allowed"), format!("{p}-denied"));
    let denied_secret = format!("not-in-the-role-{p}");
    for (name, secret) in [
        (&allowed, "ecr-pull-secret"),
        (&denied, denied_secret.as_str()),
    ] {
        let resource = ecr_pull_secret(
            name,
            json!({
                "secretName": secret,
                "registries": [{"host": env.default_registry()}],
                "namespaces": {"include": [ns]},
            }),
        );
        api.create(&PostParams::default(), &resource).await.unwrap();
    }
    // Resources only (no region): as the shipped Deployment runs with ECR_PULL_SECRETS_RESOURCES.
    let (controller, _) = shipped_controller(&env, &p, &["--resources"], &[("AWS_REGION", "")]);
    eventually(
        "the allowed resource Ready under the shipped RBAC",
        // The other test's controller may still hold the shipped Lease (15 s).
        Duration::from_secs(60),
        || async {
            let r = api.get(&allowed).await.ok()?;
            let synced = r.status.as_ref()?.namespaces.as_ref()?.synced;
            (resource_condition(&r, "Ready")?.0 == "True" && synced == 1).then_some(())
        },
    )
    .await;
    assert!(get_secret(&admin, &ns, "ecr-pull-secret").await.is_some());
    let (_, reason, message) = eventually(
        "the denied resource Degraded",
        Duration::from_secs(30),
        || async {
            resource_condition(&api.get(&denied).await.ok()?, "Degraded").filter(|c| c.0 == "True")
        },
    )
    .await;
    assert_eq!(reason, "Forbidden", "{message}");
    assert!(message.contains("resourceNames"), "{message}");
    assert!(get_secret(&admin, &ns, &denied_secret).await.is_none());

    // Deletion under the shipped RBAC: the finalizer is removed after the secret is.
    for name in [&allowed, &denied] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in [&allowed, &denied] {
        eventually(&format!("{name} gone"), Duration::from_secs(30), || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    assert!(get_secret(&admin, &ns, "ecr-pull-secret").await.is_none());
    drop(controller);
    delete_namespaces(&admin, &[ns]).await;
}

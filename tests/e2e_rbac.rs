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

    let kubeconfig = service_account_kubeconfig(&env.dir, "ecr-pull-secrets", "ecr-pull-secrets");
    let kubeconfig_text = kubeconfig.to_str().unwrap().to_string();
    let controller = env.controller_with_env(
        &p,
        &[
            "--namespace",
            "ecr-pull-secrets",
            "--credentials-secret",
            "aws-credentials",
            "--lease-name",
            "ecr-pull-secrets",
            "--target-namespaces",
            &format!("{p}-*"),
            "--service-accounts",
            "default",
        ],
        &[("KUBECONFIG", &kubeconfig_text)],
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

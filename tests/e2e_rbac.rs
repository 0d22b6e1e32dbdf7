//! End to end: the shipped manifests apply, and the controller bound only by the shipped RBAC
//! and admission policy (a token of the shipped ServiceAccount) does its job while it cannot
//! touch any other Secret, nor create one the controller would not write.
//! Run through `tests/testenv.sh run -- cargo test --test e2e_rbac -- --test-threads=1`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

/// A 403 from the admission policy (not from RBAC) whose message contains `says`.
fn refused_by_policy<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str, says: &str) {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 403
                && status.message.contains("ValidatingAdmissionPolicy")
                && status.message.contains(says) => {}
        other => {
            panic!("{what}: expected the admission policy's 403 saying {says:?}, got {other:?}")
        }
    }
}

const DOCKER_CONFIG: &str = "kubernetes.io/dockerconfigjson";

/// A Secret `name` of `type_`, with our managed-by label when `ours`, and `annotations`.
fn secret(name: &str, type_: &str, ours: bool, annotations: &[(&str, &str)]) -> Secret {
    let labels = ours.then(|| {
        BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            "ecr-pull-secrets".to_string(),
        )])
    });
    let data = match type_ {
        DOCKER_CONFIG => BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            k8s_openapi::ByteString(br#"{"auths":{}}"#.to_vec()),
        )]),
        _ => BTreeMap::new(),
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels,
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some(type_.into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Applies the shipped identity (deploy/common.yaml: namespace, ServiceAccount, roles) and the
/// shipped admission policy, and returns a client with a token of that ServiceAccount once the
/// policy is in force: a new policy reaches the admission plugin a moment after it is stored, so
/// this polls until a request only the policy forbids is refused.
async fn shipped_identity(env: &TestEnv) -> Client {
    let deploy = repo().join("deploy");
    for file in ["common.yaml", "admission-policy.yaml"] {
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            deploy.join(file).to_str().unwrap(),
        ]);
    }
    let kubeconfig = service_account_kubeconfig(&env.dir, "ecr-pull-secrets", "ecr-pull-secrets");
    let sa = client_from(&kubeconfig).await;
    wait_for_policy(&sa, true).await;
    sa
}

/// Polls until the policy is (`true`) or is no longer (`false`) in force for `sa`: a dry-run
/// create of an Opaque Secret with our name and label, which RBAC allows and only the policy
/// refuses.
async fn wait_for_policy(sa: &Client, in_force: bool) {
    let api: Api<Secret> = Api::namespaced(sa.clone(), "ecr-pull-secrets");
    let probe = secret("ecr-pull-secret", "Opaque", true, &[]);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let what = if in_force {
        "the admission policy in force"
    } else {
        "the admission policy out of force"
    };
    eventually(what, Duration::from_secs(30), || async {
        match api.create(&dry_run, &probe).await {
            // Admission comes before storage: a 409 (a Secret of that name exists there) means
            // nothing refused it.
            Ok(_) => (!in_force).then_some(()),
            Err(kube::Error::Api(s)) if s.code == 409 => (!in_force).then_some(()),
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("dockerconfigjson") => {
                in_force.then_some(())
            }
            Err(other) => panic!("probing the admission policy: {other:?}"),
        }
    })
    .await;
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

/// The controller at work under the shipped RBAC and admission policy (a token of the shipped
/// ServiceAccount), with both its namespaces' Secrets written: `a`, whose default ServiceAccount
/// lists another pull secret and which holds a Secret that is not ours, and `b`.
struct ShippedRun {
    admin: Client,
    a: String,
    b: String,
    controller: Controller,
    kubeconfig: std::path::PathBuf,
}

async fn shipped_run() -> Option<ShippedRun> {
    let env = testenv()?;
    let admin = client().await;
    shipped_identity(&env).await;
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
    Api::<ServiceAccount>::namespaced(admin.clone(), &a)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    // Another Secret the controller must never be able to touch.
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
    for ns in [&a, &b] {
        eventually(
            "the secret written under the shipped RBAC",
            // A controller another test killed may still hold the shipped Lease (15 s).
            Duration::from_secs(60),
            || async { get_secret(&admin, ns, "ecr-pull-secret").await },
        )
        .await;
    }
    Some(ShippedRun {
        admin,
        a,
        b,
        controller,
        kubeconfig,
    })
}

impl ShippedRun {
    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), namespace)
    }

    async fn finish(mut self) {
        // Whatever the scenario did, the shipped RBAC refused the controller nothing.
        assert!(
            !self.controller.log_text().contains("forbidden"),
            "{}",
            self.controller.log_text()
        );
        // SIGTERM releases the shipped Lease: the next controller need not wait for it to expire.
        self.controller.terminate(Duration::from_secs(10));
        delete_namespaces(&self.admin, &[self.a.clone(), self.b.clone()]).await;
    }
}

#[tokio::test]
async fn shipped_manifests_pass_the_api_servers_validation() {
    let Some(env) = testenv() else { return };
    // The real namespace, RBAC and admission policy; then every manifest of the base passes the
    // API server's validation (a server-side dry run needs the namespace to exist).
    shipped_identity(&env).await;
    kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-k",
        repo().join("deploy").to_str().unwrap(),
    ]);
}

#[tokio::test]
async fn shipped_rbac_is_enough_to_write_secrets_and_patch_service_accounts() {
    let Some(run) = shipped_run().await else {
        return;
    };
    for ns in [&run.a, &run.b] {
        assert!(
            get_secret(&run.admin, ns, "ecr-pull-secret")
                .await
                .is_some()
        );
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(run.admin.clone(), &run.a);
    eventually(
        "the ServiceAccount patched",
        Duration::from_secs(10),
        || async {
            let entries = accounts.get("default").await.ok()?.image_pull_secrets?;
            (entries.len() == 2).then_some(())
        },
    )
    .await;
    run.finish().await;
}

#[tokio::test]
async fn shipped_rbac_is_enough_to_restore_a_deleted_secret() {
    let Some(run) = shipped_run().await else {
        return;
    };
    run.secrets(&run.a)
        .delete("ecr-pull-secret", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted secret restored",
        Duration::from_secs(5),
        || async { get_secret(&run.admin, &run.a, "ecr-pull-secret").await },
    )
    .await;
    run.finish().await;
}

#[tokio::test]
async fn shipped_rbac_is_enough_to_repair_edited_data() {
    let Some(run) = shipped_run().await else {
        return;
    };
    // An update under the policy.
    run.secrets(&run.a)
        .patch(
            "ecr-pull-secret",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "ecr-pull-secret"},
                "data": {".dockerconfigjson": "e30="},
            })),
        )
        .await
        .unwrap();
    eventually(
        "the edited secret repaired",
        Duration::from_secs(10),
        || async {
            let s = get_secret(&run.admin, &run.a, "ecr-pull-secret").await?;
            let config = &s.data.as_ref()?.get(".dockerconfigjson")?.0;
            (config.as_slice() != b"{}").then(|| decode(&s))
        },
    )
    .await;
    run.finish().await;
}

#[tokio::test]
async fn shipped_rbac_is_enough_to_remove_a_deselected_namespaces_secret() {
    let Some(run) = shipped_run().await else {
        return;
    };
    // A delete under the policy.
    Api::<Namespace>::all(run.admin.clone())
        .patch(
            &run.b,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ecr-pull-secrets.io/exclude": "true"}}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        "the deselected namespace's secret removed",
        Duration::from_secs(10),
        || async {
            get_secret(&run.admin, &run.b, "ecr-pull-secret")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    run.finish().await;
}

#[tokio::test]
async fn shipped_rbac_reaches_no_other_secret() {
    let Some(run) = shipped_run().await else {
        return;
    };
    let sa_client = client_from(&run.kubeconfig).await;
    let theirs: Api<Secret> = Api::namespaced(sa_client.clone(), &run.a);
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
        run.secrets(&run.a).get("not-ours").await.is_ok(),
        "the other Secret is untouched"
    );
    run.finish().await;
}

/// EcrPullSecret resources under the shipped RBAC: the CRD rules are enough to add and remove
/// the finalizer and write the status; a resource whose secretName the ClusterRole does not
/// name says so in its status, and so does one whose secretName the ClusterRole names but the
/// admission policy does not.
#[tokio::test]
async fn resources_run_under_the_shipped_rbac_and_a_name_it_lacks_is_reported() {
    use ecr_pull_secrets::core::crd::EcrPullSecret;
    let Some(env) = testenv() else { return };
    let admin = client().await;
    install_crd();
    shipped_identity(&env).await;
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
    let (unlisted, unlisted_secret) = (format!("{p}-unlisted"), format!("not-in-the-policy-{p}"));
    // Half an extension: the name added to the ClusterRole only (restored below).
    kubectl(&[
        "patch",
        "clusterrole",
        "ecr-pull-secrets",
        "--type=json",
        "-p",
        &json!([{"op": "add", "path": "/rules/2/resourceNames/-", "value": unlisted_secret}])
            .to_string(),
    ]);
    for (name, secret) in [
        (&allowed, "ecr-pull-secret"),
        (&denied, denied_secret.as_str()),
        (&unlisted, unlisted_secret.as_str()),
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
    // RBAC lets the unlisted name through (once the authorizer has seen the patch), the policy
    // does not, and its fix reaches the status.
    let (_, reason, message) = eventually(
        "the resource the policy does not name Degraded with the policy's message",
        Duration::from_secs(30),
        || async {
            resource_condition(&api.get(&unlisted).await.ok()?, "Degraded")
                .filter(|c| c.0 == "True" && c.2.contains("ValidatingAdmissionPolicy"))
        },
    )
    .await;
    assert_eq!(reason, "Forbidden", "{message}");
    assert!(
        message.contains(&format!(
            "may write only Secrets named ecr-pull-secret, not Secret {ns}/{unlisted_secret}"
        )) && message.contains("add it to the names variable"),
        "{message}"
    );
    // The controller's own fix names the policy's list, not only the RBAC.
    assert!(message.contains("admission policy's names"), "{message}");
    assert!(get_secret(&admin, &ns, &unlisted_secret).await.is_none());

    // Deletion under the shipped RBAC: the finalizer is removed after the secret is.
    for name in [&allowed, &denied, &unlisted] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in [&allowed, &denied, &unlisted] {
        eventually(&format!("{name} gone"), Duration::from_secs(30), || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    assert!(get_secret(&admin, &ns, "ecr-pull-secret").await.is_none());
    drop(controller);
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        repo().join("deploy/common.yaml").to_str().unwrap(),
    ]);
    delete_namespaces(&admin, &[ns]).await;
}

/// What RBAC cannot refuse and the shipped admission policy does, for a token of the shipped
/// ServiceAccount: the policy in force, `ns` to write in, and `other` holding someone's own pull
/// Secret named ecr-pull-secret (not ours).
struct Policy {
    admin: Client,
    sa: Client,
    p: String,
    ns: String,
    other: String,
}

async fn policy() -> Option<Policy> {
    let env = testenv()?;
    let admin = client().await;
    let sa = shipped_identity(&env).await;
    let p = unique("vap");
    let (ns, other) = (format!("{p}-a"), format!("{p}-other"));
    create_namespace(&admin, &ns).await;
    create_namespace(&admin, &other).await;
    Api::<Secret>::namespaced(admin.clone(), &other)
        .create(
            &PostParams::default(),
            &secret("ecr-pull-secret", DOCKER_CONFIG, false, &[]),
        )
        .await
        .unwrap();
    let policy = Policy {
        admin,
        sa,
        p,
        ns,
        other,
    };
    // A policy that allowed adoption (another scenario's) may be in force for a moment after the
    // shipped one is applied again: wait until adoption is refused (a dry run changes nothing).
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    eventually(
        "adoption refused by the shipped policy",
        Duration::from_secs(30),
        || async {
            match policy
                .someone()
                .patch("ecr-pull-secret", &dry_run, &adopt())
                .await
            {
                Ok(_) => None,
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("lacks label") => {
                    Some(())
                }
                Err(other) => panic!("probing adoption: {other:?}"),
            }
        },
    )
    .await;
    Some(policy)
}

impl Policy {
    /// Secrets in `ns`, as the shipped ServiceAccount.
    fn theirs(&self) -> Api<Secret> {
        Api::namespaced(self.sa.clone(), &self.ns)
    }

    /// Secrets in `other`, as the shipped ServiceAccount.
    fn someone(&self) -> Api<Secret> {
        Api::namespaced(self.sa.clone(), &self.other)
    }

    async fn finish(self) {
        delete_namespaces(&self.admin, &[self.ns, self.other]).await;
    }
}

/// Our label on a Secret: adoption, when the Secret is not ours.
fn adopt() -> Patch<serde_json::Value> {
    Patch::Merge(
        json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "ecr-pull-secrets"}}}),
    )
}

#[tokio::test]
async fn admission_policy_refuses_a_token_secret_that_rbac_alone_allows() {
    let Some(policy) = policy().await else {
        return;
    };
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let token_secret = secret(
        "ecr-pull-secret",
        "kubernetes.io/service-account-token",
        true,
        &[("kubernetes.io/service-account.name", "default")],
    );
    // Without the binding, RBAC alone lets the ServiceAccount ask for a token Secret in
    // kube-system (a dry run: nothing is stored, and no token is ever issued).
    kubectl(&[
        "delete",
        "validatingadmissionpolicybinding",
        "ecr-pull-secrets",
    ]);
    wait_for_policy(&policy.sa, false).await;
    let system: Api<Secret> = Api::namespaced(policy.sa.clone(), "kube-system");
    system
        .create(&dry_run, &token_secret)
        .await
        .expect("RBAC alone allows creating a token Secret");
    // The shipped binding back: refused.
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        repo()
            .join("deploy/admission-policy.yaml")
            .to_str()
            .unwrap(),
    ]);
    wait_for_policy(&policy.sa, true).await;
    for namespace in ["kube-system", policy.ns.as_str()] {
        let api: Api<Secret> = Api::namespaced(policy.sa.clone(), namespace);
        refused_by_policy(
            api.create(&PostParams::default(), &token_secret).await,
            &format!("a service-account-token Secret in {namespace}"),
            "may write only Secrets of type kubernetes.io/dockerconfigjson, not kubernetes.io/service-account-token",
        );
        assert!(
            get_secret(&policy.admin, namespace, "ecr-pull-secret")
                .await
                .is_none()
        );
    }
    policy.finish().await;
}

#[tokio::test]
async fn admission_policy_refuses_a_secret_with_another_name() {
    let Some(policy) = policy().await else {
        return;
    };
    let (ns, foreign_name) = (&policy.ns, format!("not-ours-{}", policy.p));
    refused_by_policy(
        policy
            .theirs()
            .create(
                &PostParams::default(),
                &secret(&foreign_name, DOCKER_CONFIG, true, &[]),
            )
            .await,
        "a Secret with another name",
        &format!(
            "may write only Secrets named ecr-pull-secret, not Secret {ns}/{foreign_name}: to serve another name"
        ),
    );
    assert!(get_secret(&policy.admin, ns, &foreign_name).await.is_none());
    policy.finish().await;
}

#[tokio::test]
async fn admission_policy_refuses_a_secret_of_another_type() {
    let Some(policy) = policy().await else {
        return;
    };
    refused_by_policy(
        policy
            .theirs()
            .create(
                &PostParams::default(),
                &secret("ecr-pull-secret", "Opaque", true, &[]),
            )
            .await,
        "an Opaque Secret with our name",
        "not Opaque",
    );
    policy.finish().await;
}

#[tokio::test]
async fn admission_policy_refuses_a_secret_without_our_label() {
    let Some(policy) = policy().await else {
        return;
    };
    refused_by_policy(
        policy
            .theirs()
            .create(
                &PostParams::default(),
                &secret("ecr-pull-secret", DOCKER_CONFIG, false, &[]),
            )
            .await,
        "our Secret without our label",
        "may write only Secrets labelled app.kubernetes.io/managed-by=ecr-pull-secrets",
    );
    policy.finish().await;
}

/// RBAC allows delete by name; the policy does not, for a same-named Secret somebody else owns.
#[tokio::test]
async fn admission_policy_refuses_deleting_a_same_named_secret_that_is_not_ours() {
    let Some(policy) = policy().await else {
        return;
    };
    let other = &policy.other;
    refused_by_policy(
        policy
            .someone()
            .delete("ecr-pull-secret", &DeleteParams::default())
            .await,
        "deleting a same-named Secret without our label",
        &format!(
            "Secret {other}/ecr-pull-secret lacks label app.kubernetes.io/managed-by=ecr-pull-secrets: it is not ours, and ecr-pull-secrets may delete only its own Secrets"
        ),
    );
    get_secret(&policy.admin, other, "ecr-pull-secret")
        .await
        .expect("the other Secret is still there");
    policy.finish().await;
}

/// RBAC allows patch by name; the policy does not, not even to add our label.
#[tokio::test]
async fn admission_policy_refuses_labelling_a_same_named_secret_as_ours() {
    let Some(policy) = policy().await else {
        return;
    };
    refused_by_policy(
        policy
            .someone()
            .patch("ecr-pull-secret", &PatchParams::default(), &adopt())
            .await,
        "labelling a same-named Secret as ours",
        "may change only its own Secrets",
    );
    let kept = get_secret(&policy.admin, &policy.other, "ecr-pull-secret")
        .await
        .expect("the other Secret is still there");
    assert!(kept.metadata.labels.unwrap_or_default().is_empty());
    policy.finish().await;
}

#[tokio::test]
async fn admission_policy_allows_the_controllers_own_writes() {
    let Some(policy) = policy().await else {
        return;
    };
    // Create, change and delete its own Secret.
    let theirs = policy.theirs();
    let ours = secret("ecr-pull-secret", DOCKER_CONFIG, true, &[]);
    theirs.create(&PostParams::default(), &ours).await.unwrap();
    theirs
        .patch(
            "ecr-pull-secret",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ecr-pull-secrets.io/expires-at": "x"}}}),
            ),
        )
        .await
        .unwrap();
    theirs
        .delete("ecr-pull-secret", &DeleteParams::default())
        .await
        .unwrap();
    policy.finish().await;
}

#[tokio::test]
async fn admission_policy_refuses_dropping_our_label() {
    let Some(policy) = policy().await else {
        return;
    };
    let theirs = policy.theirs();
    let ours = secret("ecr-pull-secret", DOCKER_CONFIG, true, &[]);
    theirs.create(&PostParams::default(), &ours).await.unwrap();
    refused_by_policy(
        theirs
            .patch(
                "ecr-pull-secret",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}}),
                ),
            )
            .await,
        "removing our label",
        "may write only Secrets labelled",
    );
    policy.finish().await;
}

/// With the policy's `adoption` variable true (as an overlay would set it), the same-named
/// dockerconfigjson Secret may be labelled ours, and then deleted (which needed the label).
#[tokio::test]
async fn admission_policy_allows_adoption_when_told() {
    let Some(policy) = policy().await else {
        return;
    };
    kubectl(&[
        "patch",
        "validatingadmissionpolicy",
        "ecr-pull-secrets",
        "--type=json",
        "-p",
        r#"[{"op": "test", "path": "/spec/variables/1/name", "value": "adoption"},
            {"op": "replace", "path": "/spec/variables/1/expression", "value": "true"}]"#,
    ]);
    let someone = policy.someone();
    eventually(
        "adoption allowed by the policy",
        Duration::from_secs(30),
        || async {
            match someone
                .patch("ecr-pull-secret", &PatchParams::default(), &adopt())
                .await
            {
                Ok(_) => Some(()),
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("lacks label") => {
                    None
                }
                Err(other) => panic!("adopting: {other:?}"),
            }
        },
    )
    .await;
    someone
        .delete("ecr-pull-secret", &DeleteParams::default())
        .await
        .unwrap();
    // The shipped policy back, for whatever runs next.
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        repo()
            .join("deploy/admission-policy.yaml")
            .to_str()
            .unwrap(),
    ]);
    policy.finish().await;
}

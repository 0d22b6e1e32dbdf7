//! End to end: what a hostile run broke (issue 14), each case against the real API server and
//! ECR emulator: a namespace deleted while failing, an expired token written during an outage,
//! forged ownership of our Secret, and bad configuration that must fail at start.
//! Run through `tests/testenv.sh run -- cargo test --test e2e_hardening -- --test-threads=1`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;

/// A gauge of the controller's /metrics, 0 when absent.
async fn gauge(admin: &str, series: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await.unwrap_or_default();
    sample(&body, series).unwrap_or(0.0)
}

/// A controller (named `name`) writing `secret` into the namespaces `<p>-*`.
fn serving(env: &TestEnv, name: &str, p: &str, secret: &str) -> Controller {
    env.controller(
        name,
        &[
            "--secret-name",
            secret,
            "--target-namespaces",
            &format!("{p}-*"),
        ],
    )
}

fn failed_state() -> &'static str {
    "ecr_pull_secrets_namespaces{state=\"failed\"}"
}

/// Removes a Terminating namespace for good (no kube-controller-manager here to finalize it).
async fn finalize(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if let Ok(Some(mut ns)) = api.get_opt(name).await {
        ns.spec = None;
        let _ = api
            .replace_subresource("finalize", name, &PostParams::default(), &ns)
            .await;
    }
}

/// A ValidatingAdmissionPolicy that refuses every Secret write in namespaces labelled
/// `e2e-deny-secrets=<prefix>`; removed when dropped.
struct DenySecrets {
    file: std::path::PathBuf,
}

impl DenySecrets {
    async fn install(client: &Client, prefix: &str, namespace: &str) -> DenySecrets {
        let name = format!("deny-secrets-{prefix}");
        let manifest = format!(
            "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {{apiGroups: [''], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [secrets]}}
  validations:
    - {{expression: 'false', message: 'e2e: no Secret writes in this namespace'}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{e2e-deny-secrets: {prefix}}}
"
        );
        let file = std::env::temp_dir().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        kubectl(&["apply", "-f", file.to_str().unwrap()]);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let label = json!({"metadata": {"labels": {"e2e-deny-secrets": prefix}}});
        namespaces
            .patch(namespace, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap();
        // Policies take effect a moment after they are created.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let probe: Secret = serde_json::from_value(json!({"metadata": {"name": "probe"}})).unwrap();
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        eventually("the policy enforced", Duration::from_secs(30), || async {
            secrets
                .create(&dry_run, &probe)
                .await
                .is_err()
                .then_some(())
        })
        .await;
        DenySecrets { file }
    }
}

impl Drop for DenySecrets {
    fn drop(&mut self) {
        kubectl(&[
            "delete",
            "--ignore-not-found",
            "-f",
            self.file.to_str().unwrap(),
        ]);
    }
}

#[tokio::test]
async fn a_namespace_deleted_while_failing_leaves_the_failed_count_at_once() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("gone");
    let (good, failing) = (format!("{p}-ok"), format!("{p}-bad"));
    create_namespace(&client, &good).await;
    create_namespace(&client, &failing).await;
    // No Secret may be written there: an admission policy refuses them.
    let _policy = DenySecrets::install(&client, &p, &failing).await;
    let secret = format!("pull-{p}");
    let controller = serving(&env, &p, &p, &secret);
    let admin = controller.admin_address().await;
    eventually(
        "the good namespace synced",
        Duration::from_secs(30),
        || async { get_secret(&client, &good, &secret).await },
    )
    .await;
    // Four failures in a row: the next retry is 8 to 16 s away.
    eventually(
        "four failed writes in the quota'd namespace",
        Duration::from_secs(40),
        || async {
            controller
                .log_text()
                .lines()
                .any(|l| l.contains(failing.as_str()) && l.contains("failures=4"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(gauge(&admin, failed_state()).await, 1.0);
    let api: Api<Namespace> = Api::all(client.clone());
    api.delete(&failing, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted namespace gone from the failed count, well before its next retry",
        Duration::from_secs(3),
        || async { (gauge(&admin, failed_state()).await == 0.0).then_some(()) },
    )
    .await;
    // Gone for good (the Delete event path) keeps it at zero.
    finalize(&client, &failing).await;
    eventually("the namespace removed", Duration::from_secs(10), || async {
        api.get_opt(&failing).await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(gauge(&admin, failed_state()).await, 0.0);
    assert_eq!(
        gauge(&admin, "ecr_pull_secrets_namespaces{state=\"synced\"}").await,
        1.0
    );
    drop(controller);
    delete_namespaces(&client, &[good]).await;
}

#[tokio::test]
async fn an_expired_token_written_during_an_outage_says_so() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("expired");
    let first = format!("{p}-0");
    create_namespace(&client, &first).await;
    let secret = format!("pull-{p}");
    env.set_emulator(&json!({"ttl_seconds": 8}));
    let controller = serving(&env, &p, &p, &secret);
    let admin = controller.admin_address().await;
    let written = eventually("the first token", Duration::from_secs(30), || async {
        get_secret(&client, &first, &secret).await
    })
    .await;
    // AWS fails from now on: the token runs out.
    env.set_emulator(&json!({"ttl_seconds": 8, "fail": "5xx"}));
    let expires = decode(&written).expires_at;
    eventually(
        "the last good token expired",
        Duration::from_secs(30),
        || async { (SystemTime::now() > expires + Duration::from_secs(1)).then_some(()) },
    )
    .await;
    let late = format!("{p}-late");
    create_namespace(&client, &late).await;
    let held = eventually(
        "the new namespace written",
        Duration::from_secs(10),
        || async { get_secret(&client, &late, &secret).await },
    )
    .await;
    assert!(
        decode(&held).expires_at <= SystemTime::now(),
        "an expired token"
    );
    eventually(
        "the expired state in the metrics",
        Duration::from_secs(10),
        || async {
            (gauge(&admin, "ecr_pull_secrets_namespaces{state=\"expired\"}").await >= 1.0)
                .then_some(())
        },
    )
    .await;
    // The namespace written before expiry is re-checked when the token expires (the
    // annotation's expiry is truncated to seconds, the token's is not: wait, do not race it).
    eventually(
        "nothing with an expired token counted as synced",
        Duration::from_secs(5),
        || async {
            (gauge(&admin, "ecr_pull_secrets_namespaces{state=\"synced\"}").await == 0.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        gauge(&admin, "ecr_pull_secrets_namespaces{state=\"expired\"}").await,
        2.0,
        "both namespaces hold the expired token"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &late);
    eventually(
        "a TokenExpired Warning Event",
        Duration::from_secs(10),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("TokenExpired"))
                .filter(|e| e.type_.as_deref() == Some("Warning"))
        },
    )
    .await;
    let log = controller.log_text();
    assert!(
        log.contains("the pull secret holds an expired token"),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("wrote pull secret") && l.contains(late.as_str())),
        "an expired token is not reported as a plain write"
    );
    env.set_emulator(&json!({}));
    drop(controller);
    delete_namespaces(&client, &[first, late]).await;
}

/// Someone who may create Secrets in a namespace deletes ours and recreates it at once with
/// our label, our fingerprint and our field manager, around other data.
async fn forge(client: &Client, namespace: &str, name: &str, original: &Secret) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.delete(name, &DeleteParams::default()).await.unwrap();
    let host = decode(original).hosts[0].clone();
    let config = json!({"auths": {host: {
        "username": "AWS", "password": "forged", "auth": STANDARD.encode("AWS:forged"),
    }}});
    let forged = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": original.labels(), "annotations": original.annotations(),
        },
        "data": {".dockerconfigjson": STANDARD.encode(config.to_string())},
    });
    api.patch(
        name,
        &PatchParams::apply("ecr-pull-secrets").force(),
        &Patch::Apply(&forged),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn forged_ownership_is_repaired_and_a_copied_label_is_not_ours() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("forge");
    let (served, theirs, opted_out) = (
        format!("{p}-served"),
        format!("{p}-theirs"),
        format!("{p}-optout"),
    );
    let secret = format!("pull-{p}");
    for ns in [&served, &theirs] {
        create_namespace(&client, ns).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let optout: Namespace = serde_json::from_value(json!({"metadata": {
        "name": opted_out,
        "annotations": {"ecr-pull-secrets.io/exclude": "true"},
    }}))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &optout)
        .await
        .unwrap();
    // Users' Secrets with our name and our managed-by label, made with kubectl's field manager.
    let users = |ns: &str| {
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": secret, "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "ecr-pull-secrets"}},
            "stringData": {"note": "a user's own data"},
        }))
        .unwrap()
    };
    let mut originals = BTreeMap::new();
    for ns in [&theirs, &opted_out] {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let made = api
            .create(
                &PostParams {
                    field_manager: Some("kubectl-create".into()),
                    ..PostParams::default()
                },
                &users(ns),
            )
            .await
            .unwrap();
        originals.insert(ns.clone(), made.resource_version().unwrap());
    }
    let controller = serving(&env, &p, &p, &secret);
    let admin = controller.admin_address().await;
    let mut ours = eventually("our Secret", Duration::from_secs(30), || async {
        get_secret(&client, &served, &secret).await
    })
    .await;
    eventually(
        "the labelled user Secret reported as a conflict",
        Duration::from_secs(10),
        || async {
            (gauge(&admin, "ecr_pull_secrets_namespaces{state=\"conflict\"}").await == 1.0)
                .then_some(())
        },
    )
    .await;

    // (a) Ten forgeries in a row, each repaired: the data hashes to the fingerprint again and
    // holds a token the emulator issued.
    for round in 0..10 {
        forge(&client, &served, &secret, &ours).await;
        ours = eventually(
            &format!("forgery {round} repaired"),
            Duration::from_secs(10),
            || async {
                let now = get_secret(&client, &served, &secret).await?;
                let data = &now.data.as_ref()?.get(".dockerconfigjson")?.0;
                let fingerprint = now.annotations().get("ecr-pull-secrets.io/fingerprint")?;
                (sha256_hex(data) == *fingerprint && decode(&now).password != "forged")
                    .then_some(now)
            },
        )
        .await;
        assert!(env.issuing_call(&decode(&ours).password).is_some());
    }

    // (b) The users' Secrets were neither overwritten nor deleted: reconcile the whole
    // selection again (a restart) and check.
    drop(controller);
    let again = serving(&env, &format!("{p}-again"), &p, &secret);
    let admin = again.admin_address().await;
    eventually(
        "the restart reconciled",
        Duration::from_secs(30),
        || async {
            let synced = gauge(&admin, "ecr_pull_secrets_namespaces{state=\"synced\"}").await;
            let conflict = gauge(&admin, "ecr_pull_secrets_namespaces{state=\"conflict\"}").await;
            let queued = gauge(&admin, "ecr_pull_secrets_queue_depth").await;
            (synced == 1.0 && conflict == 1.0 && queued == 0.0).then_some(())
        },
    )
    .await;
    for (ns, rv) in &originals {
        let kept = get_secret(&client, ns, &secret)
            .await
            .unwrap_or_else(|| panic!("the user's Secret in {ns} was deleted"));
        assert_eq!(&kept.resource_version().unwrap(), rv, "{ns}: overwritten");
    }
    drop(again);
    delete_namespaces(&client, &[served, theirs, opted_out]).await;
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_fix() {
    let Some(env) = testenv() else { return };
    let p = unique("badcfg");
    // (arguments, environment, expected message)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--lease-namespace", "no-such-namespace"],
            vec![],
            "the Lease's namespace \"no-such-namespace\" does not exist",
        ),
        (vec!["--log-level", "loud"], vec![], "is not a log filter"),
        (vec![], vec![("RUST_LOG", "verbose")], "RUST_LOG"),
        (vec!["--api-timeout", "0s"], vec![], "use 1s to 10m"),
        (
            vec!["--api-timeout", "18446744073709551615s"],
            vec![],
            "out of range",
        ),
        (vec!["--identity", ""], vec![], "the identity is empty"),
        (vec![], vec![("POD_NAME", "")], "the identity is empty"),
        (vec![], vec![("POD_NAME", " ")], "the identity is empty"),
        (vec!["--retry-period", "0s"], vec![], "use 500ms to 1h"),
        (
            vec!["--max-refresh-interval", "9300000000000000000s"],
            vec![],
            "out of range",
        ),
        (
            vec!["--lease-duration", "2562047788015215h"],
            vec![],
            "out of range",
        ),
    ];
    for (i, (args, vars, expected)) in cases.into_iter().enumerate() {
        let mut controller = env.controller_with_env(&format!("{p}-{i}"), &args, &vars);
        let code = controller.wait_exit(Duration::from_secs(20));
        assert!(
            matches!(code, Some(c) if c != 0 && c != 101),
            "{args:?} {vars:?}: exit code {code:?} (101 is a panic)"
        );
        let log = controller.log_text();
        assert!(
            log.contains(expected),
            "{args:?} {vars:?}: expected {expected:?} in\n{log}"
        );
    }
}

/// A replica that may not touch its Lease (RBAC) is not ready, and says what to grant; once
/// granted, it is ready again without a restart.
#[tokio::test]
async fn a_replica_that_cannot_contend_for_the_lease_is_not_ready_and_says_why() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("nolease");
    let kubeconfig = testenv_user(&p);
    let role = |rules: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {p}}}
rules:
  - {{apiGroups: [''], resources: [namespaces], verbs: [get, list, watch]}}
  - {{apiGroups: [''], resources: [secrets], verbs: [create, get, list, watch, patch, delete]}}
  - {{apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}}
{rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {p}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {p}}}
subjects: [{{kind: User, name: {p}}}]
"
        )
    };
    let file = env.dir.join(format!("{p}-rbac.yaml"));
    std::fs::write(&file, role("")).unwrap();
    kubectl(&["apply", "-f", file.to_str().unwrap()]);
    let controller = env.controller_with_env(
        &p,
        &[
            "--namespace",
            "default",
            "--target-namespaces",
            &format!("{p}-*"),
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let admin = controller.admin_address().await;
    let body = eventually(
        "/readyz 503 naming the fix",
        Duration::from_secs(30),
        || async {
            let (code, body) = http_get(&admin, "/readyz").await?;
            (code == 503 && body.contains("Lease")).then_some(body)
        },
    )
    .await;
    assert!(
        body.contains("grant get, list, watch and update on leases"),
        "{body}"
    );
    assert!(
        controller
            .log_text()
            .contains("cannot contend for the lease; not ready")
    );
    std::fs::write(
        &file,
        role("  - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [create, get, list, watch, update]}"),
    )
    .unwrap();
    kubectl(&["apply", "-f", file.to_str().unwrap()]);
    eventually("ready once granted", Duration::from_secs(30), || async {
        (http_get(&admin, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    drop(controller);
    kubectl(&["delete", "--ignore-not-found", "-f", file.to_str().unwrap()]);
    let _ = client;
}

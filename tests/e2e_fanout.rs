//! End to end: namespace fan-out, selection, drift repair, ownership safety, ServiceAccounts,
//! backoff and cleanup. Run through `tests/testenv.sh run -- cargo test --test e2e_fanout -- --test-threads=1`.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{LocalObjectReference, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Counts the controller's "wrote pull secret" log lines.
fn writes(controller: &support::Controller) -> usize {
    controller.log_text().matches("wrote pull secret").count()
}

async fn create_service_account(
    client: &Client,
    namespace: &str,
    name: &str,
    pull_secrets: &[&str],
) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(
            pull_secrets
                .iter()
                .map(|n| LocalObjectReference {
                    name: n.to_string(),
                })
                .collect(),
        ),
        ..ServiceAccount::default()
    };
    api.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

async fn pull_secrets_of(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    api.get(name)
        .await
        .unwrap()
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

#[tokio::test]
async fn five_hundred_namespaces_then_a_quiet_minute_makes_zero_writes() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("quiet");
    let namespaces: Vec<String> = (0..500).map(|i| format!("{p}-{i:03}")).collect();
    for ns in &namespaces {
        create_namespace(&client, ns).await;
    }
    let secret_name = format!("pull-{p}");
    let started = Instant::now();
    let controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &format!("{p}-*"),
            "--write-qps",
            "200",
            "--write-burst",
            "200",
        ],
    );
    let secrets: Api<Secret> = Api::all(client.clone());
    let by_name = ListParams::default().fields(&format!("metadata.name={secret_name}"));
    let synced = eventually(
        "500 namespaces synced",
        Duration::from_secs(120),
        || async {
            let list = secrets.list(&by_name).await.unwrap();
            (list.items.len() == 500).then_some(list.items)
        },
    )
    .await;
    eprintln!("500 namespaces synced in {:?}", started.elapsed());
    for secret in &synced {
        decode(secret);
    }
    let versions: BTreeMap<String, String> = synced
        .iter()
        .map(|s| (s.namespace().unwrap(), s.resource_version().unwrap()))
        .collect();
    let writes_before = writes(&controller);
    assert_eq!(writes_before, 500, "one write per namespace");
    let calls_before = env.aws_calls();

    // The measurement itself: a minute in which nothing changes.
    tokio::time::sleep(Duration::from_secs(60)).await;

    let after: BTreeMap<String, String> = secrets
        .list(&by_name)
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| (s.namespace().unwrap(), s.resource_version().unwrap()))
        .collect();
    assert_eq!(after, versions, "no resourceVersion moved");
    assert_eq!(writes(&controller), writes_before, "write counter flat");
    assert_eq!(env.aws_calls(), calls_before, "no AWS call either");
    drop(controller);
    delete_namespaces(&client, &namespaces).await;
}

#[tokio::test]
async fn deleted_and_edited_secrets_are_restored_within_a_second_without_aws() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("drift");
    let ns = format!("{p}-app");
    create_namespace(&client, &ns).await;
    let secret_name = format!("pull-{p}");
    let _controller = env.controller(
        &p,
        &["--secret-name", &secret_name, "--target-namespaces", &ns],
    );
    let original = eventually("the secret", Duration::from_secs(30), || async {
        get_secret(&client, &ns, &secret_name).await
    })
    .await;
    let token = decode(&original).password;
    let calls = env.aws_calls();
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // Deleted: back within a second, same token, no AWS call.
    api.delete(&secret_name, &DeleteParams::default())
        .await
        .unwrap();
    let deleted_at = Instant::now();
    let restored = eventually(
        "the deleted secret restored",
        Duration::from_secs(1),
        || async { get_secret(&client, &ns, &secret_name).await },
    )
    .await;
    eprintln!("deleted secret restored after {:?}", deleted_at.elapsed());
    assert_eq!(decode(&restored).password, token);

    // Edited by someone else (another field manager): restored likewise.
    let edit = json!({"data": {".dockerconfigjson": ByteString(br#"{"auths":{}}"#.to_vec())}});
    let params = PatchParams {
        field_manager: Some("someone-else".into()),
        ..PatchParams::default()
    };
    let edited = api
        .patch(&secret_name, &params, &Patch::Merge(&edit))
        .await
        .unwrap();
    let edited_at = Instant::now();
    let edited_rv = edited.resource_version().unwrap();
    let repaired = eventually(
        "the edited secret restored",
        Duration::from_secs(1),
        || async {
            let s = get_secret(&client, &ns, &secret_name).await?;
            (s.resource_version().unwrap() != edited_rv).then_some(s)
        },
    )
    .await;
    eprintln!("edited secret restored after {:?}", edited_at.elapsed());
    assert_eq!(decode(&repaired).password, token);
    assert_eq!(env.aws_calls(), calls, "repairs never call AWS");
    delete_namespaces(&client, &[ns]).await;
}

#[tokio::test]
async fn a_foreign_secret_stays_byte_identical_and_an_event_explains_why() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("foreign");
    let (mine, theirs) = (format!("{p}-mine"), format!("{p}-theirs"));
    create_namespace(&client, &mine).await;
    create_namespace(&client, &theirs).await;
    let secret_name = format!("pull-{p}");
    let api: Api<Secret> = Api::namespaced(client.clone(), &theirs);
    let data = BTreeMap::from([("token".to_string(), ByteString(b"theirs".to_vec()))]);
    let foreign = create_foreign_secret(&client, &theirs, &secret_name, data).await;
    let controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &format!("{p}-*"),
        ],
    );
    eventually(
        "our secret in the other namespace",
        Duration::from_secs(30),
        || async { get_secret(&client, &mine, &secret_name).await },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &theirs);
    let event = eventually("a conflict Event", Duration::from_secs(10), || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretConflict"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap().contains("is not ours"));
    let now = api.get(&secret_name).await.unwrap();
    assert_eq!(
        now.resource_version(),
        foreign.resource_version(),
        "never written"
    );
    assert_eq!(now.data, foreign.data);
    assert_eq!(now.type_, foreign.type_);
    // ... and the metric counts the conflict.
    let admin = controller.admin_address().await;
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert_eq!(
        sample(&metrics, "ecr_pull_secrets_namespaces{state=\"conflict\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ecr_pull_secrets_namespaces{state=\"synced\"}"),
        Some(1.0),
        "{metrics}"
    );
    // The flag-configured secret's verdict, as a resource's status would say it, is an Event
    // on the controller's Lease (it has no object of its own).
    let lease = format!("lease-{}", p.to_ascii_lowercase());
    let all_events: Api<Event> = Api::all(client.clone());
    let verdict = eventually(
        "a SecretConflict Event on the Lease",
        Duration::from_secs(10),
        || async {
            all_events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some("Lease")
                            && r.name.as_deref() == Some(lease.as_str())
                    }) && e.reason.as_deref() == Some("SecretConflict")
                })
        },
    )
    .await;
    assert_eq!(verdict.type_.as_deref(), Some("Warning"));
    let note = verdict.note.unwrap_or_default();
    assert!(
        note.contains("1 namespace(s) hold a Secret with this name that is not ours"),
        "{note}"
    );
    delete_namespaces(&client, &[mine, theirs]).await;
}

#[tokio::test]
async fn labelling_a_namespace_out_removes_secret_and_entry_and_back_restores_them() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("label");
    let ns = format!("{p}-app");
    create_namespace_labeled(&client, &ns, labels(&[("ecr", "yes")])).await;
    create_service_account(&client, &ns, "default", &["other"]).await;
    let secret_name = format!("pull-{p}");
    let _controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--namespace-selector",
            "ecr=yes",
            "--service-accounts",
            "default",
        ],
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let relabel = |value: &'static str| {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move {
            let patch = json!({"metadata": {"labels": {"ecr": value}}});
            namespaces
                .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    for round in 0..2 {
        eventually(
            "secret and ServiceAccount entry",
            Duration::from_secs(30),
            || async {
                get_secret(&client, &ns, &secret_name).await?;
                let entries = pull_secrets_of(&client, &ns, "default").await;
                (entries == ["other".to_string(), secret_name.clone()]).then_some(())
            },
        )
        .await;
        relabel("no").await;
        eventually(
            "secret and entry removed",
            Duration::from_secs(10),
            || async {
                let gone = get_secret(&client, &ns, &secret_name).await.is_none();
                let entries = pull_secrets_of(&client, &ns, "default").await;
                (gone && entries == ["other".to_string()]).then_some(())
            },
        )
        .await;
        if round == 0 {
            relabel("yes").await;
        }
    }
    delete_namespaces(&client, &[ns]).await;
}

#[tokio::test]
async fn service_accounts_keep_every_entry_under_a_racing_writer_and_new_ones_are_patched_fast() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("sa");
    let ns = format!("{p}-app");
    create_namespace(&client, &ns).await;
    create_service_account(&client, &ns, "default", &["first", "second"]).await;
    let secret_name = format!("pull-{p}");
    let _controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &ns,
            "--service-accounts",
            "*",
        ],
    );
    eventually(
        "our entry after the two others",
        Duration::from_secs(30),
        || async {
            let entries = pull_secrets_of(&client, &ns, "default").await;
            (entries
                == [
                    "first".to_string(),
                    "second".to_string(),
                    secret_name.clone(),
                ])
            .then_some(())
        },
    )
    .await;

    // A new ServiceAccount gets our entry within a second.
    create_service_account(&client, &ns, "fresh", &[]).await;
    let created = Instant::now();
    eventually(
        "the new ServiceAccount patched",
        Duration::from_secs(1),
        || async {
            pull_secrets_of(&client, &ns, "fresh")
                .await
                .contains(&secret_name)
                .then_some(())
        },
    )
    .await;
    eprintln!("new ServiceAccount patched after {:?}", created.elapsed());

    // Race: another writer appends its own entry to each new ServiceAccount (read, append,
    // write with the resourceVersion, retry on 409) while the controller adds ours.
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..20).map(|i| format!("race-{i:02}")).collect();
    let mut racers = Vec::new();
    for name in &names {
        create_service_account(&client, &ns, name, &["base"]).await;
        let api = api.clone();
        let name = name.clone();
        racers.push(tokio::spawn(async move {
            loop {
                let mut sa = api.get(&name).await.unwrap();
                let mut list = sa.image_pull_secrets.take().unwrap_or_default();
                list.push(LocalObjectReference {
                    name: "racer".into(),
                });
                sa.image_pull_secrets = Some(list);
                match api.replace(&name, &PostParams::default(), &sa).await {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for racer in racers {
        racer.await.unwrap();
    }
    for name in &names {
        eventually("every entry present", Duration::from_secs(10), || async {
            let mut entries = pull_secrets_of(&client, &ns, name).await;
            entries.sort();
            let mut expected = vec!["base".to_string(), "racer".to_string(), secret_name.clone()];
            expected.sort();
            (entries == expected).then_some(())
        })
        .await;
    }
    delete_namespaces(&client, &[ns]).await;
}

/// Installs a ValidatingAdmissionPolicy that refuses Secret `name` in namespace `namespace`.
fn refuse_secret(policy: &str, namespace: &str, name: &str) {
    let manifest = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {policy}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["secrets"]
  validations:
  - expression: "!(object.metadata.name == '{name}' && object.metadata.namespace == '{namespace}')"
    message: "refused by the e2e test"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {policy}
spec:
  policyName: {policy}
  validationActions: [Deny]
"#
    );
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "kubectl apply of the policy"
    );
}

fn remove_policy(policy: &str) {
    for kind in [
        "validatingadmissionpolicybinding",
        "validatingadmissionpolicy",
    ] {
        let _ = Command::new("kubectl")
            .args(["delete", kind, policy, "--ignore-not-found"])
            .status();
    }
}

#[tokio::test]
async fn refused_writes_back_off_exponentially_without_delaying_other_namespaces() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("refused");
    let (blocked, open) = (format!("{p}-blocked"), format!("{p}-open"));
    let secret_name = format!("pull-{p}");
    refuse_secret(&p, &blocked, &secret_name);
    // The policy is enforced once the API server has loaded it: probe with a write of our own.
    create_namespace(&client, &blocked).await;
    let probe_api: Api<Secret> = Api::namespaced(client.clone(), &blocked);
    eventually("the policy in force", Duration::from_secs(30), || async {
        let probe = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        match probe_api.create(&PostParams::default(), &probe).await {
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 403 => Some(()),
            Ok(_) => {
                let _ = probe_api
                    .delete(&secret_name, &DeleteParams::default())
                    .await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    create_namespace(&client, &open).await;
    let controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &format!("{p}-*"),
        ],
    );
    eventually(
        "the open namespace synced",
        Duration::from_secs(30),
        || async { get_secret(&client, &open, &secret_name).await },
    )
    .await;
    // Five failures of the blocked namespace, spaced by the backoff.
    let failures = |text: String| -> Vec<f64> {
        text.lines()
            .filter(|l| l.contains("reconcile failed; backing off") && l.contains(&blocked))
            .filter_map(|l| {
                let ms = l.split("retry_in_ms=").nth(1)?.split_whitespace().next()?;
                ms.parse::<f64>().ok()
            })
            .collect()
    };
    let delays = eventually(
        "five backed-off failures",
        Duration::from_secs(40),
        || async {
            let delays = failures(controller.log_text());
            (delays.len() >= 5).then_some(delays)
        },
    )
    .await;
    eprintln!("backoff delays (ms): {delays:?}");
    for (i, delay) in delays.iter().take(5).enumerate() {
        let ceiling = 1000.0 * 2f64.powi(i as i32);
        assert!(
            *delay >= ceiling * 0.5 && *delay <= ceiling,
            "failure {i}: delay {delay} ms outside [{}, {ceiling}]",
            ceiling * 0.5
        );
    }
    // Meanwhile a new namespace is served at once.
    let late = format!("{p}-late");
    create_namespace(&client, &late).await;
    let created = Instant::now();
    eventually(
        "a new namespace during the backoff",
        Duration::from_secs(1),
        || async { get_secret(&client, &late, &secret_name).await },
    )
    .await;
    eprintln!(
        "new namespace served after {:?} while another backs off",
        created.elapsed()
    );
    remove_policy(&p);
    drop(controller);
    delete_namespaces(&client, &[blocked, open, late]).await;
}

#[tokio::test]
async fn cleanup_removes_managed_secrets_and_entries_only() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("cleanup");
    let (a, b) = (format!("{p}-a"), format!("{p}-b"));
    create_namespace(&client, &a).await;
    create_namespace(&client, &b).await;
    create_service_account(&client, &a, "default", &["keep"]).await;
    let secret_name = format!("pull-{p}");
    // A foreign Secret with our name in b.
    create_foreign_secret(&client, &b, &secret_name, BTreeMap::new()).await;
    let mut controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &format!("{p}-*"),
            "--service-accounts",
            "default",
        ],
    );
    eventually("secret and entry in a", Duration::from_secs(30), || async {
        get_secret(&client, &a, &secret_name).await?;
        pull_secrets_of(&client, &a, "default")
            .await
            .contains(&secret_name)
            .then_some(())
    })
    .await;
    assert_eq!(controller.terminate(Duration::from_secs(10)), Some(0));

    let cleanup = |dry_run: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-pull-secrets"));
        cmd.args(["cleanup", "--secret-name", &secret_name]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dry = cleanup(true);
    assert!(
        dry.contains(&format!("would remove Secret {a}/{secret_name}")),
        "{dry}"
    );
    assert!(
        !dry.contains(&format!("{b}/")),
        "the foreign Secret is not ours: {dry}"
    );
    assert!(
        get_secret(&client, &a, &secret_name).await.is_some(),
        "dry run changes nothing"
    );

    let done = cleanup(false);
    assert!(
        done.contains("removed 1 Secret(s) and 1 ServiceAccount entry"),
        "{done}"
    );
    assert!(get_secret(&client, &a, &secret_name).await.is_none());
    assert_eq!(pull_secrets_of(&client, &a, "default").await, ["keep"]);
    assert!(
        get_secret(&client, &b, &secret_name).await.is_some(),
        "foreign Secret kept"
    );
    delete_namespaces(&client, &[a, b]).await;
}

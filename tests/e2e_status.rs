//! End to end: `ecr-pull-secrets status` against the real controller's work: every state it
//! reports, the leader, JSON for scripts, the exit codes, and that it needs no more than the
//! shipped RBAC. Run through
//! `tests/testenv.sh run -- cargo test --test e2e_status -- --test-threads=1 --nocapture`.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;

/// What one `status` run printed, and its exit code.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("status -o json printed no JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the built binary's `status` with `args`, and `env` on top of the test's environment.
fn status(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ecr-pull-secrets"))
        .arg("status")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ecr-pull-secrets status");
    let run = Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    eprintln!(
        "status {args:?}: exit {}\n{}{}",
        run.code, run.stdout, run.stderr
    );
    run
}

/// The row of `namespace` in a JSON report.
fn row<'a>(report: &'a Value, namespace: &str) -> &'a Value {
    report["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|r| r["namespace"] == namespace)
        .unwrap_or_else(|| panic!("no row for {namespace}: {report}"))
}

/// The table line of `namespace`, split into its first three columns.
fn table_row(table: &str, namespace: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(namespace))
        .unwrap_or_else(|| panic!("no line for {namespace}:\n{table}"));
    // SELECTED is `yes` or `no (reason)`: two words.
    let words: Vec<&str> = line.split_whitespace().collect();
    if words[1] == "yes" {
        vec![words[0].into(), words[1].into(), words[2].into()]
    } else {
        vec![
            words[0].into(),
            format!("{} {}", words[1], words[2]),
            words[3].into(),
        ]
    }
}

async fn create_annotated_namespace(client: &kube::Client, name: &str, key: &str, value: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(BTreeMap::from([(key.into(), value.into())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns).await.unwrap();
}

fn seconds_until(rfc3339: &str) -> i64 {
    let at = humantime::parse_rfc3339(rfc3339).expect("an RFC 3339 time");
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(past) => -(past.duration().as_secs() as i64),
    }
}

#[tokio::test]
async fn status_shows_every_state_the_leader_and_exits_3_when_a_selected_namespace_is_not_synced() {
    let Some(env) = testenv() else { return };
    let started = Instant::now();
    let client = client().await;
    let p = unique("status");
    let ns = |suffix: &str| format!("{p}-{suffix}");
    let (a, b, skip, optout, gone, foreign) = (
        ns("a"),
        ns("b"),
        ns("skip"),
        ns("optout"),
        ns("gone"),
        ns("foreign"),
    );
    let secret_name = format!("pull-{p}");
    for name in [&a, &b, &skip, &gone] {
        create_namespace(&client, name).await;
    }
    create_annotated_namespace(&client, &optout, "ecr-pull-secrets.io/exclude", "true").await;
    // A foreign Secret with our name, made before the controller starts in a namespace that opts
    // out: step 2 lets it join the selection. Made in a namespace the controller already
    // selects, the controller's write could come first (it did: a 409 for the test).
    create_annotated_namespace(&client, &foreign, "ecr-pull-secrets.io/exclude", "true").await;
    let data = BTreeMap::from([("token".to_string(), ByteString(b"theirs".to_vec()))]);
    create_foreign_secret(&client, &foreign, &secret_name, data).await;
    // Deleted, it stays Terminating: the test environment has no namespace controller.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&gone, &DeleteParams::default())
        .await
        .unwrap();

    let lease = format!("lease-{p}");
    let identity = format!("leader-{p}");
    let targets = format!("{p}-*");
    let selection = [
        "--secret-name",
        secret_name.as_str(),
        "--target-namespaces",
        targets.as_str(),
        "--exclude-namespaces",
        skip.as_str(),
    ];
    let mut controller_args = selection.to_vec();
    controller_args.extend(["--lease-name", &lease, "--identity", &identity]);
    let mut controller = env.controller(&p, &controller_args);
    let mut secrets = BTreeMap::new();
    for name in [&a, &b] {
        let secret = eventually("the secret written", Duration::from_secs(30), || async {
            get_secret(&client, name, &secret_name).await
        })
        .await;
        secrets.insert(name.clone(), decode(&secret));
    }
    let mut status_args = selection.to_vec();
    status_args.extend(["--lease-name", &lease]);
    let with = |extra: &[&'static str]| {
        let mut args = status_args.clone();
        args.extend_from_slice(extra);
        args
    };

    // 1. All selected namespaces synced: exit 0, and the JSON says why.
    let run = status(&with(&["-o", "json"]), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["secretName"], secret_name.as_str());
    let leader = &report["leader"];
    assert_eq!(leader["holder"], identity.as_str(), "{leader}");
    assert_eq!(leader["expired"], false);
    assert!(
        leader["lease"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{lease}"))
    );
    assert!(seconds_until(leader["renewTime"].as_str().unwrap()) > -20);
    for name in [&a, &b] {
        let r = row(&report, name);
        assert_eq!(r["selected"], true);
        assert_eq!(r["reason"], Value::Null);
        assert_eq!(r["state"], "synced", "{r}");
        assert_eq!(r["registries"], json!([env.default_registry()]));
        // The emulator's tokens live 12 h; the annotation is the token's expiry.
        let expires = r["expiresAt"].as_str().unwrap();
        assert_eq!(
            humantime::parse_rfc3339(expires).unwrap(),
            secrets[name].expires_at
        );
        assert!(seconds_until(expires) > 11 * 3600, "{expires}");
        let written = seconds_until(r["lastWrite"].as_str().unwrap());
        assert!(
            (-120..=1).contains(&written),
            "last write {written}s from now"
        );
        assert_eq!(r["serviceAccountsMissing"], Value::Null);
    }
    for (name, reason) in [(&skip, "excluded"), (&optout, "opt-out")] {
        let r = row(&report, name);
        assert_eq!(r["selected"], false);
        assert_eq!(r["reason"], reason);
        assert_eq!(r["state"], "excluded");
        assert_eq!(r["registries"], json!([]));
        assert_eq!(r["expiresAt"], Value::Null);
    }
    assert_eq!(row(&report, &gone)["state"], "terminating");
    assert_eq!(row(&report, &gone)["reason"], "terminating");
    // Other tests' namespaces are not ours to count (they are excluded or terminating).
    let counts = &report["counts"];
    assert_eq!(counts["synced"], 2, "{counts}");
    for state in [
        "outdated", "expired", "edited", "missing", "conflict", "orphaned",
    ] {
        assert_eq!(counts[state], 0, "{state}: {counts}");
    }
    let rows = report["namespaces"].as_array().unwrap().len() as u64;
    let counted: u64 = counts
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, rows, "every namespace counted once");

    // 2. A foreign Secret with our name in a selected namespace: conflict, exit 3; table output.
    namespaces
        .patch(
            &foreign,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ecr-pull-secrets.io/exclude": null}}}),
            ),
        )
        .await
        .unwrap();
    let run = status(&with(&[]), &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let table = &run.stdout;
    assert!(
        table.starts_with(&format!(
            "Secret: {secret_name}\nLeader: {identity} (Lease "
        )),
        "{table}"
    );
    let header = table.lines().find(|l| l.starts_with("NAMESPACE")).unwrap();
    assert_eq!(
        header
            .split("  ")
            .filter(|c| !c.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>(),
        [
            "NAMESPACE",
            "SELECTED",
            "STATE",
            "REGISTRIES",
            "EXPIRES",
            "LAST WRITE"
        ]
    );
    assert_eq!(table_row(table, &a), [a.as_str(), "yes", "synced"]);
    assert_eq!(
        table_row(table, &foreign),
        [foreign.as_str(), "yes", "conflict"]
    );
    assert_eq!(
        table_row(table, &skip),
        [skip.as_str(), "no (excluded)", "excluded"]
    );
    assert_eq!(
        table_row(table, &optout),
        [optout.as_str(), "no (opt-out)", "excluded"]
    );
    assert_eq!(
        table_row(table, &gone),
        [gone.as_str(), "no (terminating)", "terminating"]
    );
    let a_line = table.lines().find(|l| l.starts_with(a.as_str())).unwrap();
    assert!(a_line.contains(&env.default_registry()), "{a_line}");
    assert!(
        a_line.contains("(in 11h") || a_line.contains("(in 12h"),
        "{a_line}"
    );
    assert!(a_line.contains(" ago)"), "{a_line}");
    assert!(
        table.contains("2 synced") && table.contains("1 conflict"),
        "{table}"
    );
    assert!(table.contains("\nconflict: a Secret"), "{table}");
    assert!(table.contains("--adopt-existing"), "{table}");

    // 3. Controller stopped (the lease is released), one secret deleted: missing, exit 3.
    assert_eq!(controller.terminate(Duration::from_secs(20)), Some(0));
    let api: Api<Secret> = Api::namespaced(client.clone(), &a);
    api.delete(&secret_name, &DeleteParams::default())
        .await
        .unwrap();
    let run = status(&with(&["--output", "json"]), &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = run.json();
    let r = row(&report, &a);
    assert_eq!(r["state"], "missing", "{r}");
    assert_eq!(r["selected"], true);
    assert_eq!(r["registries"], json!([]));
    assert_eq!(r["lastWrite"], Value::Null);
    assert_eq!(row(&report, &b)["state"], "synced");
    assert_eq!(row(&report, &foreign)["state"], "conflict");
    assert_eq!(
        report["leader"]["holder"],
        Value::Null,
        "released on SIGTERM"
    );
    assert_eq!(report["counts"]["missing"], 1);
    assert_eq!(report["counts"]["conflict"], 1);
    assert_eq!(report["counts"]["synced"], 1);
    let run = status(&with(&[]), &[]);
    assert_eq!(run.code, 3);
    assert!(
        run.stdout.contains("Leader: none: Lease ") && run.stdout.contains(" released"),
        "{}",
        run.stdout
    );
    assert_eq!(table_row(&run.stdout, &a), [a.as_str(), "yes", "missing"]);

    // 4. The data edited by someone else: edited. Left out of the selection: orphaned.
    let secrets_b: Api<Secret> = Api::namespaced(client.clone(), &b);
    let edit = json!({"data": {".dockerconfigjson": ByteString(br#"{"auths":{}}"#.to_vec())}});
    let params = PatchParams {
        field_manager: Some("someone-else".into()),
        ..PatchParams::default()
    };
    secrets_b
        .patch(&secret_name, &params, &Patch::Merge(&edit))
        .await
        .unwrap();
    let report = status(&with(&["-o", "json"]), &[]).json();
    assert_eq!(row(&report, &b)["state"], "edited");
    let exclude_b = format!("{skip},{b}");
    let orphan_args: Vec<&str> = [
        "--secret-name",
        secret_name.as_str(),
        "--target-namespaces",
        targets.as_str(),
        "--exclude-namespaces",
        exclude_b.as_str(),
        "--lease-name",
        lease.as_str(),
        "-o",
        "json",
    ]
    .to_vec();
    let run = status(&orphan_args, &[]);
    assert_eq!(run.code, 3, "a still missing, foreign a conflict");
    let r = row(&run.json(), &b).clone();
    assert_eq!(
        (&r["state"], &r["reason"]),
        (&json!("orphaned"), &json!("excluded"))
    );
    assert_eq!(r["registries"], json!([env.default_registry()]), "{r}");

    // Never a token in what status prints.
    for secret in secrets.values() {
        for output in [&run.stdout, &run.stderr, table] {
            assert!(!output.contains(&secret.password), "a token was printed");
        }
    }
    eprintln!("status e2e took {:?}", started.elapsed());
    delete_namespaces(&client, &[a, b, skip, optout, gone, foreign]).await;
}

#[tokio::test]
async fn status_needs_no_more_than_the_shipped_rbac_and_a_refusal_names_the_permission() {
    let Some(env) = testenv() else { return };
    let started = Instant::now();
    let admin = client().await;
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        repo().join("deploy/common.yaml").to_str().unwrap(),
    ]);
    let p = unique("status-rbac");
    let (conflict, missing) = (format!("{p}-conflict"), format!("{p}-missing"));
    create_namespace(&admin, &conflict).await;
    create_namespace(&admin, &missing).await;
    create_foreign_secret(&admin, &conflict, "ecr-pull-secret", BTreeMap::new()).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &missing);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("default".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let targets = format!("{p}-*");
    let args = [
        "--target-namespaces",
        targets.as_str(),
        "--service-accounts",
        "default",
        "--namespace",
        "ecr-pull-secrets",
        "-o",
        "json",
    ];

    // Bound only by the shipped roles: every read passes (the Lease may or may not exist).
    let kubeconfig = service_account_kubeconfig(&env.dir, "ecr-pull-secrets", "ecr-pull-secrets");
    let as_controller = [("KUBECONFIG", kubeconfig.to_str().unwrap())];
    let run = status(&args, &as_controller);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(!run.stderr.contains("not allowed"), "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["secretName"], "ecr-pull-secret");
    assert_eq!(row(&report, &conflict)["state"], "conflict");
    let r = row(&report, &missing);
    assert_eq!(r["state"], "missing");
    assert_eq!(r["serviceAccountsMissing"], json!(["default"]));

    // A user bound to nothing: exit 1, naming the permission and where it comes from.
    let user = format!("stranger-{p}");
    let out = Command::new(repo().join("tests/testenv.sh"))
        .args(["user", &user])
        .output()
        .expect("testenv.sh user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stranger = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let run = status(&args, &[("KUBECONFIG", &stranger)]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty(), "no half report: {}", run.stdout);
    for part in [
        "not allowed to list namespaces",
        "`list` on namespaces",
        "deploy/common.yaml",
    ] {
        assert!(run.stderr.contains(part), "{part}: {}", run.stderr);
    }
    // An API server that does not answer: exit 1 with the cause.
    let nowhere = env.dir.join(format!("{p}-nowhere.kubeconfig"));
    let admin_config = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let rewritten: String = admin_config
        .lines()
        .map(|l| match l.trim().strip_prefix("server: ") {
            Some(_) => format!("    server: https://127.0.0.1:{port}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&nowhere, rewritten).unwrap();
    let run = status(&args, &[("KUBECONFIG", nowhere.to_str().unwrap())]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot list namespaces") && run.stderr.contains("KUBECONFIG"),
        "{}",
        run.stderr
    );
    eprintln!("status RBAC e2e took {:?}", started.elapsed());
    delete_namespaces(&admin, &[conflict, missing]).await;
}

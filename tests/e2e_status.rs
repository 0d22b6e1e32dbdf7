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

/// The shared fixture: namespaces of a fresh prefix for every state `status` reports, and a
/// controller serving them. Each scenario builds its own, so each runs alone and in any order.
struct Fixture {
    env: TestEnv,
    client: kube::Client,
    /// Selected, and written by the controller.
    a: String,
    b: String,
    /// Excluded by `--exclude-namespaces`.
    skip: String,
    /// Opted out by annotation.
    optout: String,
    /// Deleted: stays Terminating (the test environment has no namespace controller).
    gone: String,
    /// Opted out, with a foreign Secret of our name; [`Fixture::select_foreign`] opts it in.
    foreign: String,
    secret_name: String,
    lease: String,
    identity: String,
    targets: String,
    controller: Controller,
    /// What the controller wrote to `a` and `b`, once [`Fixture::synced`] saw it.
    secrets: BTreeMap<String, PullSecret>,
}

impl Fixture {
    /// The namespaces, then the controller (with the emulator as the scenario left it).
    async fn start(env: TestEnv) -> Fixture {
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
        // The foreign Secret is made before the controller starts, in a namespace that opts
        // out: made in one the controller selects, the controller's write could come first.
        create_annotated_namespace(&client, &foreign, "ecr-pull-secrets.io/exclude", "true").await;
        let data = BTreeMap::from([("token".to_string(), ByteString(b"theirs".to_vec()))]);
        create_foreign_secret(&client, &foreign, &secret_name, data).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .delete(&gone, &DeleteParams::default())
            .await
            .unwrap();
        let (lease, identity, targets) = (format!("lease-{p}"), format!("leader-{p}"), ns("*"));
        let controller = env.controller(
            &p,
            &[
                "--secret-name",
                &secret_name,
                "--target-namespaces",
                &targets,
                "--exclude-namespaces",
                &skip,
                "--lease-name",
                &lease,
                "--identity",
                &identity,
            ],
        );
        Fixture {
            env,
            client,
            a,
            b,
            skip,
            optout,
            gone,
            foreign,
            secret_name,
            lease,
            identity,
            targets,
            controller,
            secrets: BTreeMap::new(),
        }
    }

    /// Waits until the controller wrote `a` and `b`, and keeps what it wrote.
    async fn synced(&mut self) {
        for name in [&self.a, &self.b] {
            let secret = eventually("the secret written", Duration::from_secs(30), || async {
                get_secret(&self.client, name, &self.secret_name).await
            })
            .await;
            self.secrets.insert(name.clone(), decode(&secret));
        }
    }

    /// `status` with the controller's selection, its Lease, and `extra`. Whatever it prints,
    /// it never prints a token.
    fn status(&self, extra: &[&str]) -> Run {
        self.status_excluding(&self.skip, extra)
    }

    /// `status` as [`Fixture::status`], with `--exclude-namespaces exclude`.
    fn status_excluding(&self, exclude: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "--secret-name",
            &self.secret_name,
            "--target-namespaces",
            &self.targets,
            "--exclude-namespaces",
            exclude,
            "--lease-name",
            &self.lease,
        ];
        args.extend_from_slice(extra);
        let run = status(&args, &[]);
        for secret in self.secrets.values() {
            for output in [&run.stdout, &run.stderr] {
                assert!(!output.contains(&secret.password), "a token was printed");
            }
        }
        run
    }

    /// The foreign Secret's namespace opts in: a conflict.
    async fn select_foreign(&self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .patch(
                &self.foreign,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"ecr-pull-secrets.io/exclude": null}}}),
                ),
            )
            .await
            .unwrap();
    }

    /// Stops the controller (it releases the lease on SIGTERM).
    fn stop_controller(&mut self) {
        assert_eq!(self.controller.terminate(Duration::from_secs(20)), Some(0));
    }

    async fn delete(self) {
        let names = [
            self.a,
            self.b,
            self.skip,
            self.optout,
            self.gone,
            self.foreign,
        ];
        delete_namespaces(&self.client, &names).await;
    }
}

/// The leader's Ready verdict as `status -o json` shows it, once its reason is `reason`.
async fn verdict(fixture: &Fixture, reason: &str) -> Value {
    eventually(
        &format!("status to show Ready with reason {reason}"),
        Duration::from_secs(60),
        || async {
            let ready = fixture.status(&["-o", "json"]).json()["ready"].clone();
            (ready["reason"] == reason).then_some(ready)
        },
    )
    .await
}

#[tokio::test]
async fn every_selected_namespace_synced_exits_0_and_the_json_says_why() {
    let Some(env) = testenv() else { return };
    let mut f = Fixture::start(env).await;
    f.synced().await;
    let run = f.status(&["-o", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["secretName"], f.secret_name.as_str());
    let leader = &report["leader"];
    assert_eq!(leader["holder"], f.identity.as_str(), "{leader}");
    assert_eq!(leader["expired"], false);
    assert!(
        leader["lease"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}", f.lease))
    );
    assert!(seconds_until(leader["renewTime"].as_str().unwrap()) > -20);
    for name in [&f.a, &f.b] {
        let r = row(&report, name);
        assert_eq!(r["selected"], true);
        assert_eq!(r["reason"], Value::Null);
        assert_eq!(r["state"], "synced", "{r}");
        assert_eq!(r["registries"], json!([f.env.default_registry()]));
        // The emulator's tokens live 12 h; the annotation is the token's expiry.
        let expires = r["expiresAt"].as_str().unwrap();
        assert_eq!(
            humantime::parse_rfc3339(expires).unwrap(),
            f.secrets[name].expires_at
        );
        assert!(seconds_until(expires) > 11 * 3600, "{expires}");
        let written = seconds_until(r["lastWrite"].as_str().unwrap());
        assert!(
            (-120..=1).contains(&written),
            "last write {written}s from now"
        );
        assert_eq!(r["serviceAccountsMissing"], Value::Null);
    }
    for (name, reason) in [(&f.skip, "excluded"), (&f.optout, "opt-out")] {
        let r = row(&report, name);
        assert_eq!(r["selected"], false);
        assert_eq!(r["reason"], reason);
        assert_eq!(r["state"], "excluded");
        assert_eq!(r["registries"], json!([]));
        assert_eq!(r["expiresAt"], Value::Null);
    }
    assert_eq!(row(&report, &f.gone)["state"], "terminating");
    assert_eq!(row(&report, &f.gone)["reason"], "terminating");
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
    f.delete().await;
}

#[tokio::test]
async fn a_foreign_secret_in_a_selected_namespace_is_a_conflict_exit_3_and_the_table_says_why() {
    let Some(env) = testenv() else { return };
    let mut f = Fixture::start(env).await;
    f.synced().await;
    f.select_foreign().await;
    let run = f.status(&[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let table = &run.stdout;
    assert!(
        table.starts_with(&format!(
            "Secret: {}\nLeader: {} (Lease ",
            f.secret_name, f.identity
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
    assert_eq!(table_row(table, &f.a), [f.a.as_str(), "yes", "synced"]);
    assert_eq!(
        table_row(table, &f.foreign),
        [f.foreign.as_str(), "yes", "conflict"]
    );
    assert_eq!(
        table_row(table, &f.skip),
        [f.skip.as_str(), "no (excluded)", "excluded"]
    );
    assert_eq!(
        table_row(table, &f.optout),
        [f.optout.as_str(), "no (opt-out)", "excluded"]
    );
    assert_eq!(
        table_row(table, &f.gone),
        [f.gone.as_str(), "no (terminating)", "terminating"]
    );
    let a_line = table.lines().find(|l| l.starts_with(f.a.as_str())).unwrap();
    assert!(a_line.contains(&f.env.default_registry()), "{a_line}");
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
    f.delete().await;
}

#[tokio::test]
async fn a_stopped_controller_released_the_lease_and_a_deleted_secret_is_missing() {
    let Some(env) = testenv() else { return };
    let mut f = Fixture::start(env).await;
    f.synced().await;
    verdict(&f, "Synced").await;
    f.select_foreign().await;
    f.stop_controller();
    let api: Api<Secret> = Api::namespaced(f.client.clone(), &f.a);
    api.delete(&f.secret_name, &DeleteParams::default())
        .await
        .unwrap();
    let run = f.status(&["--output", "json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let report = run.json();
    let r = row(&report, &f.a);
    assert_eq!(r["state"], "missing", "{r}");
    assert_eq!(r["selected"], true);
    assert_eq!(r["registries"], json!([]));
    assert_eq!(r["lastWrite"], Value::Null);
    assert_eq!(row(&report, &f.b)["state"], "synced");
    assert_eq!(row(&report, &f.foreign)["state"], "conflict");
    assert_eq!(
        report["leader"]["holder"],
        Value::Null,
        "released on SIGTERM"
    );
    assert_eq!(report["counts"]["missing"], 1);
    assert_eq!(report["counts"]["conflict"], 1);
    assert_eq!(report["counts"]["synced"], 1);
    // The last verdict stays on the Lease, marked as its publisher's, who no longer leads.
    assert_eq!(report["ready"]["stale"], true, "{}", report["ready"]);
    let run = f.status(&[]);
    assert_eq!(run.code, 3);
    assert!(
        run.stdout.contains("Leader: none: Lease ") && run.stdout.contains(" released"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("no longer leads, so it may be out of date"),
        "{}",
        run.stdout
    );
    assert_eq!(
        table_row(&run.stdout, &f.a),
        [f.a.as_str(), "yes", "missing"]
    );
    f.delete().await;
}

#[tokio::test]
async fn data_edited_by_someone_else_is_edited_and_a_deselected_secret_is_orphaned() {
    let Some(env) = testenv() else { return };
    let mut f = Fixture::start(env).await;
    f.synced().await;
    // Stopped, so that nobody repairs the edit.
    f.stop_controller();
    let secrets_b: Api<Secret> = Api::namespaced(f.client.clone(), &f.b);
    let edit = json!({"data": {".dockerconfigjson": ByteString(br#"{"auths":{}}"#.to_vec())}});
    let params = PatchParams {
        field_manager: Some("someone-else".into()),
        ..PatchParams::default()
    };
    secrets_b
        .patch(&f.secret_name, &params, &Patch::Merge(&edit))
        .await
        .unwrap();
    let run = f.status(&["-o", "json"]);
    assert_eq!(run.code, 3, "b edited");
    assert_eq!(row(&run.json(), &f.b)["state"], "edited");
    let run = f.status_excluding(&format!("{},{}", f.skip, f.b), &["-o", "json"]);
    assert_eq!(run.code, 0, "a synced; b orphaned, which is not selected");
    let r = row(&run.json(), &f.b).clone();
    assert_eq!(
        (&r["state"], &r["reason"]),
        (&json!("orphaned"), &json!("excluded"))
    );
    assert_eq!(r["registries"], json!([f.env.default_registry()]), "{r}");
    f.delete().await;
}

/// The flag-configured secret's Ready verdict, as a resource's status would carry it: in
/// `status` (published on the Lease) and in `ecr_pull_secrets_resource_ready{resource="(flags)"}`.
#[tokio::test]
async fn the_leaders_ready_verdict_is_in_status_and_in_a_metric_and_follows_aws() {
    let Some(env) = testenv() else { return };
    // AWS refuses every call from the start: nothing can be written.
    env.set_emulator(&json!({ "fail": "5xx" }));
    let f = Fixture::start(env).await;
    let admin = f.controller.admin_address().await;
    let ready_metric = || async {
        let (_, body) = http_get(&admin, "/metrics").await?;
        sample(
            &body,
            "ecr_pull_secrets_resource_ready{resource=\"(flags)\"}",
        )
    };
    let failing = verdict(&f, "TokenRefreshFailing").await;
    assert_eq!(failing["secretName"], f.secret_name.as_str());
    assert_eq!(failing["status"], "False", "{failing}");
    assert!(
        failing["message"]
            .as_str()
            .unwrap()
            .contains("retried with backoff"),
        "{failing}"
    );
    assert_eq!(failing["stale"], false);
    assert_eq!(ready_metric().await, Some(0.0));
    let run = f.status(&[]);
    assert_eq!(run.code, 3, "nothing written yet");
    assert!(
        run.stdout
            .contains("\nReady: False (TokenRefreshFailing) since "),
        "{}",
        run.stdout
    );

    // AWS answers again: the verdict and the metric follow.
    f.env.set_emulator(&json!({}));
    let synced = verdict(&f, "Synced").await;
    assert_eq!(synced["status"], "True", "{synced}");
    eventually("the metric at 1", Duration::from_secs(30), || async {
        (ready_metric().await == Some(1.0)).then_some(())
    })
    .await;
    let run = f.status(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("\nReady: True (Synced) since "),
        "{}",
        run.stdout
    );
    // Another --secret-name than the controller's: its verdict is not passed off as this one's.
    let other = status(
        &[
            "--secret-name",
            "another",
            "--lease-name",
            &f.lease,
            "--target-namespaces",
            "none-*",
        ],
        &[],
    );
    assert!(
        other.stdout.contains(&format!(
            "Ready: not published for another: the controller's flag-configured secret is {}",
            f.secret_name
        )),
        "{}",
        other.stdout
    );
    f.delete().await;
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

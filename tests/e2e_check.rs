//! End to end: `ecr-pull-secrets check` against the real API server and the ECR emulator: all
//! passes as admin without printing a secret, an AWS fault fails with the permission to grant,
//! a ServiceAccount without RBAC fails on every verb, and the shipped roles pass.
//! Run through `tests/testenv.sh run -- cargo test --test e2e_check -- --test-threads=1`.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use support::*;

/// What one `check` run printed.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The lines whose status and name are `status` and `name` (`PASS`, `aws us-east-1`).
    fn lines(&self, status: &str, name: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| {
                l.strip_prefix(status)
                    .map(str::trim_start)
                    .and_then(|rest| rest.strip_prefix(name))
                    .is_some_and(|rest| rest.starts_with("  "))
            })
            .collect()
    }

    fn line(&self, status: &str, name: &str) -> &str {
        let lines = self.lines(status, name);
        assert_eq!(
            lines.len(),
            1,
            "one {status} {name} line in:\n{}",
            self.stdout
        );
        lines[0]
    }

    /// The fixes under `lines`, with `as above` resolved.
    fn fixes(&self, lines: &[&str]) -> Vec<String> {
        let mut fixes: Vec<String> = Vec::new();
        for line in lines {
            let fix = match (self.fix_after(line), fixes.last()) {
                ("as above", Some(last)) => last.clone(),
                ("as above", None) => panic!("`as above` with nothing above:\n{}", self.stdout),
                (fix, _) => fix.to_string(),
            };
            fixes.push(fix);
        }
        fixes
    }

    /// The `fix:` line right after `line`.
    fn fix_after(&self, line: &str) -> &str {
        let mut lines = self.stdout.lines();
        lines.find(|l| *l == line).expect("the line");
        lines
            .next()
            .and_then(|l| l.trim_start().strip_prefix("fix: "))
            .unwrap_or_else(|| panic!("no fix under {line:?} in:\n{}", self.stdout))
    }

    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `ecr-pull-secrets check ARGS` to completion (or kills it after a deadline).
fn check(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Outcome {
    let id = unique("check");
    let (out, err) = (
        env.dir.join(format!("{id}.stdout")),
        env.dir.join(format!("{id}.stderr")),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecr-pull-secrets"))
        .arg("check")
        .args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start the binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outcome = Outcome {
        code,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    eprintln!(
        "--- check {args:?} exited {code:?} ---\n{}{}",
        outcome.stdout, outcome.stderr
    );
    assert!(code.is_some(), "check did not finish within 60 s");
    outcome
}

/// Emulator log entries since `from` (an index into the log).
fn calls_since(env: &TestEnv, from: usize) -> Vec<Value> {
    env.call_log().into_iter().skip(from).collect()
}

/// Asserts `output` holds none of `secrets`, no emulator password (`emu-...`), no docker
/// `auth` string (base64 of `AWS:...`), and no word whose hash is an issued password's.
fn assert_no_secret(output: &str, secrets: &[&str], env: &TestEnv) {
    for secret in secrets {
        assert!(!output.contains(secret), "{secret:?} printed:\n{output}");
    }
    assert!(!output.contains("emu-"), "a token printed:\n{output}");
    assert!(
        !output.contains(&STANDARD.encode("AWS:")[..5]),
        "an auth string printed:\n{output}"
    );
    let issued: BTreeSet<String> = env
        .call_log()
        .iter()
        .filter_map(|c| c["password_sha256"].as_str().map(str::to_string))
        .collect();
    for word in output.split(|c: char| c.is_whitespace() || ",;()\"'".contains(c)) {
        let decoded = STANDARD
            .decode(word)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let password = decoded
            .as_deref()
            .and_then(|d| d.strip_prefix("AWS:"))
            .unwrap_or(word);
        assert!(
            !issued.contains(&sha256_hex(password.as_bytes())),
            "an issued token printed: {word}"
        );
    }
}

/// The expiry printed on a token line, checked against the issuing call's.
fn assert_expiry(line: &str, calls: &[Value], service: &str, region: &str) {
    let printed = line
        .split("expires ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no expiry in {line:?}"));
    let printed = humantime::parse_rfc3339(printed)
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let call = calls
        .iter()
        .find(|c| c["service"] == service && (service == "ecr-public" || c["region"] == region))
        .unwrap_or_else(|| panic!("no {service} call in {region}"));
    let issued = call["expires_at"].as_f64().unwrap();
    assert!((issued - printed).abs() < 1.0, "{line}: issued {issued}");
    assert!(line.contains("(in 11h59m)"), "{line}");
}

#[tokio::test]
async fn passes_as_admin_printing_hosts_and_expiry_never_a_secret() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("check");
    let system = format!("{p}-system");
    create_namespace(&client, &system).await;
    let (key_id, secret_key) = ("AKIACHECK00000000001", "check-secret-access-key-e2e");
    put_credentials(&client, &system, "aws", key_id, secret_key).await;
    let hosts = [
        "111111111111.dkr.ecr.us-east-1.amazonaws.com",
        "222222222222.dkr.ecr.eu-west-1.amazonaws.com",
    ];
    let log_start = env.call_log().len();
    let out = check(
        &env,
        &[
            "--namespace",
            &system,
            "--credentials-secret",
            "aws",
            "--registry",
            &hosts.join(","),
            "--ecr-public",
            "--service-accounts",
            "default",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0));
    assert!(
        out.stdout.ends_with("0 failed, 0 skipped\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.line("PASS", "kubernetes")
            .contains("authenticated as admin")
    );
    assert_eq!(
        out.lines("PASS", "permission").len(),
        23,
        "every verb reviewed"
    );
    assert!(
        out.line("PASS", "credentials")
            .contains(&format!("{system}/aws"))
    );
    let calls = calls_since(&env, log_start);
    assert_eq!(calls.len(), 3, "one fetch per identity: {calls:?}");
    for call in &calls {
        assert_eq!(call["outcome"], "ok");
        assert_eq!(
            call["access_key_id"], key_id,
            "the Secret's keys, not the environment's"
        );
    }
    let east = out.line("PASS", "aws us-east-1");
    assert!(east.contains(&format!("token for {};", hosts[0])), "{east}");
    assert_expiry(east, &calls, "ecr", "us-east-1");
    let west = out.line("PASS", "aws eu-west-1");
    assert!(west.contains(&format!("token for {};", hosts[1])), "{west}");
    assert_expiry(west, &calls, "ecr", "eu-west-1");
    let public = out.line("PASS", "aws ecr-public");
    assert!(public.contains("token for public.ecr.aws;"), "{public}");
    assert_expiry(public, &calls, "ecr-public", "");
    let environment_key = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    assert_no_secret(&out.all(), &[secret_key, key_id, &environment_key], &env);

    // The default chain with an assumed role, as JSON.
    let log_start = env.call_log().len();
    let out = check(
        &env,
        &[
            "--role-arn",
            "arn:aws:iam::123456789012:role/ecr-puller",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0));
    let report: Value = serde_json::from_str(&out.stdout).expect("a JSON report");
    assert_eq!(report["ok"], true);
    assert_eq!(report["failed"], 0);
    let token = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "aws us-east-1")
        .expect("the us-east-1 check");
    assert_eq!(token["status"], "pass");
    assert!(
        token["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("token for {};", env.default_registry()))
    );
    let calls = calls_since(&env, log_start);
    assert_eq!(calls.len(), 1);
    let signer = calls[0]["access_key_id"].as_str().unwrap();
    assert!(signer.starts_with("ASIA"), "assumed-role keys: {signer}");
    assert_no_secret(&out.all(), &[&environment_key], &env);
    delete_namespaces(&client, &[system]).await;
}

#[tokio::test]
async fn aws_faults_fail_with_the_permission_or_the_keys_to_fix() {
    let Some(env) = testenv() else { return };
    env.set_emulator(&json!({ "fail": "denied" }));
    let out = check(&env, &[], &[]);
    assert_eq!(out.code, Some(1));
    let line = out.line("FAIL", "aws us-east-1");
    assert!(line.contains("AccessDeniedException"), "{line}");
    assert!(
        out.fix_after(line)
            .contains("lack permission ecr:GetAuthorizationToken"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with("1 failed, 3 skipped\n"),
        "{}",
        out.stdout
    );
    out.line("PASS", "kubernetes");
    assert!(out.lines("FAIL", "permission").is_empty());

    env.set_emulator(&json!({ "allowed_access_keys": ["AKIASOMEONEELSE00001"] }));
    let out = check(&env, &[], &[]);
    assert_eq!(out.code, Some(1));
    let line = out.line("FAIL", "aws us-east-1");
    assert!(line.contains("UnrecognizedClientException"), "{line}");
    assert!(
        out.fix_after(line)
            .contains("does not recognise the access key"),
        "{}",
        out.stdout
    );
    env.set_emulator(&json!({}));
}

#[tokio::test]
async fn a_service_account_without_rbac_fails_every_verb_naming_the_roles_to_apply() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("norbac");
    create_namespace(&client, &p).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &p);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let kubeconfig = service_account_kubeconfig(&env.dir, &p, "nobody");
    let kubeconfig = kubeconfig.to_str().unwrap();
    let out = check(
        &env,
        &["--credentials-secret", "aws-credentials"],
        &[("KUBECONFIG", kubeconfig)],
    );
    assert_eq!(out.code, Some(1));
    assert!(out.line("PASS", "kubernetes").contains(&format!(
        "authenticated as system:serviceaccount:{p}:nobody"
    )));
    assert!(out.lines("PASS", "permission").is_empty(), "{}", out.stdout);
    let denied = out.lines("FAIL", "permission");
    for expected in [
        "list namespaces: denied".to_string(),
        "create secrets in every namespace: denied".to_string(),
        "patch secrets/ecr-pull-secret in every namespace: denied".to_string(),
        "create events.events.k8s.io in every namespace: denied".to_string(),
        format!("update leases.coordination.k8s.io/ecr-pull-secrets in namespace {p}: denied"),
        format!("get secrets/aws-credentials in namespace {p}: denied"),
    ] {
        assert!(
            denied.iter().any(|l| l.ends_with(&expected)),
            "{expected}:\n{}",
            out.stdout
        );
    }
    assert_eq!(denied.len(), 19, "every verb, one line each");
    for fix in out.fixes(&denied) {
        assert!(
            fix.contains("deploy/common.yaml")
                && fix.contains(&format!("ServiceAccount {p}/nobody")),
            "{fix}"
        );
    }
    let credentials = out.line("FAIL", "credentials");
    assert!(credentials.contains("not allowed to read"), "{credentials}");
    out.line("SKIP", "aws");
    assert!(
        out.stdout.ends_with("20 failed, 2 skipped\n"),
        "{}",
        out.stdout
    );
    delete_namespaces(&client, &[p]).await;
}

/// `check` as the shipped Deployment runs it: the shipped roles (deploy/common.yaml) applied,
/// their credentials Secret written, and a token of the shipped ServiceAccount.
struct Shipped {
    env: TestEnv,
    client: Client,
    kubeconfig: PathBuf,
}

/// The secret access key in the shipped credentials Secret.
const SHIPPED_SECRET_KEY: &str = "shipped-secret-key-e2e";

async fn shipped() -> Option<Shipped> {
    let env = testenv()?;
    let client = client().await;
    let deploy = repo().join("deploy/common.yaml");
    kubectl(&["apply", "--server-side", "-f", deploy.to_str().unwrap()]);
    put_credentials(
        &client,
        "ecr-pull-secrets",
        "aws-credentials",
        "AKIATESTENV000000001",
        SHIPPED_SECRET_KEY,
    )
    .await;
    let kubeconfig = service_account_kubeconfig(&env.dir, "ecr-pull-secrets", "ecr-pull-secrets");
    Some(Shipped {
        env,
        client,
        kubeconfig,
    })
}

impl Shipped {
    /// `check` with the shipped credentials Secret and ServiceAccounts, and `args`.
    fn check(&self, args: &[&str]) -> Outcome {
        let shipped = [
            "--credentials-secret",
            "aws-credentials",
            "--service-accounts",
            "default",
        ];
        check(
            &self.env,
            &[&shipped[..], args].concat(),
            &[("KUBECONFIG", self.kubeconfig.to_str().unwrap())],
        )
    }

    /// Leaves the shipped namespace as e2e_rbac expects to find it (it applies deploy/ first).
    async fn finish(self) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), "ecr-pull-secrets");
        secrets
            .delete("aws-credentials", &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_shipped_roles_pass_every_check_without_printing_a_secret() {
    let Some(shipped) = shipped().await else {
        return;
    };
    let out = shipped.check(&[]);
    assert_eq!(out.code, Some(0));
    assert_eq!(out.lines("PASS", "permission").len(), 23);
    out.line("PASS", "credentials");
    out.line("PASS", "aws us-east-1");
    assert_no_secret(&out.all(), &[SHIPPED_SECRET_KEY], &shipped.env);
    shipped.finish().await;
}

#[tokio::test]
async fn another_secret_name_fails_naming_the_cluster_role_resource_names_to_change() {
    let Some(shipped) = shipped().await else {
        return;
    };
    let out = shipped.check(&["--secret-name", "other-pull"]);
    assert_eq!(out.code, Some(1));
    let denied = out.lines("FAIL", "permission");
    assert_eq!(
        denied.len(),
        5,
        "get, list, watch, patch, delete:\n{}",
        out.stdout
    );
    for (line, fix) in denied.iter().zip(out.fixes(&denied)) {
        assert!(
            line.contains("secrets/other-pull in every namespace"),
            "{line}"
        );
        assert!(
            fix.contains(
                "change resourceNames [\"ecr-pull-secret\"] to [\"other-pull\"] in the ClusterRole's secrets rule"
            ),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.lines("PASS", "permission")
            .iter()
            .any(|l| l.ends_with("create secrets in every namespace"))
    );
    shipped.finish().await;
}

//! End to end: observability (issue: observability and operations). A real Prometheus scrapes
//! the real controller and evaluates the shipped alert rules; and the logs carry the decisions
//! but never a token or key. Run through
//! `tests/testenv.sh run -- cargo test --test e2e_observability -- --test-threads=1`.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// The shipped rules with time compressed for a test: every `for:` becomes 2 s and the
/// expiring-soon window (10800 s) becomes `window` seconds. The expressions are unchanged.
fn compressed_rules(window: u64) -> String {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts/ecr-pull-secrets.rules.yaml"),
    )
    .unwrap();
    assert_eq!(
        rules.matches("- time() < 10800").count(),
        1,
        "the expiring-soon expression changed; update this test"
    );
    let rules = rules.replace("- time() < 10800", &format!("- time() < {window}"));
    let alerts = rules.matches("- alert: ").count();
    let mut fors = 0;
    let rules: String = rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                fors += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}for: 2s\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(fors, alerts, "every alert has a `for:`");
    rules
}

/// A Prometheus server (Debian's `prometheus`) scraping one controller every second.
struct Prometheus {
    child: Option<Child>,
    address: String,
    log: PathBuf,
}

impl Prometheus {
    async fn start(dir: &Path, rules: &str, target: &str) -> Prometheus {
        let dir = dir.join(unique("prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yaml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yaml]\n\
                 scrape_configs:\n  - job_name: ecr-pull-secrets\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yaml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus (Debian package `prometheus`, see tests/install-deps.sh)");
        let prometheus = Prometheus {
            child: Some(child),
            address,
            log,
        };
        eventually("Prometheus ready", Duration::from_secs(30), || async {
            prometheus.get("/-/ready").map(|_| ())
        })
        .await;
        prometheus
    }

    /// GET `path`; the body when Prometheus answers 2xx.
    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "3", "-G"])
            .arg(format!("http://{}{path}", self.address))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// The result vector of an instant query.
    fn query(&self, query: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "3", "-G"])
            .arg(format!("http://{}/api/v1/query", self.address))
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// (alertname, identity or resource label, state) of every pending or firing alert.
    fn alerts(&self) -> Vec<(String, String, String)> {
        let Some(body) = self.get("/api/v1/alerts") else {
            return Vec::new();
        };
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
                (
                    label("alertname"),
                    label("identity") + &label("resource"),
                    a["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn firing(&self, alertname: &str) -> Vec<String> {
        self.alerts()
            .into_iter()
            .filter(|(name, _, state)| name == alertname && state == "firing")
            .map(|(_, identity, _)| identity)
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "--- prometheus log {} (last 20 lines) ---",
                self.log.display()
            );
            let lines: Vec<&str> = text.lines().rev().take(20).collect();
            for line in lines.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

#[tokio::test]
async fn alerts_fire_on_an_aws_outage_and_resolve_on_a_real_prometheus() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("prom");
    let namespaces: Vec<String> = (0..3).map(|i| format!("{p}-{i}")).collect();
    for ns in &namespaces {
        create_namespace(&client, ns).await;
    }
    // Tokens live 40 s and are refreshed with about 20 s left; the compressed expiring-soon
    // window is 12 s, so a healthy controller never enters it and a failed refresh soon does.
    env.set_emulator(&json!({ "ttl_seconds": 40 }));
    let secret_name = format!("pull-{p}");
    let controller = env.controller(
        &p,
        &[
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &namespaces.join(","),
        ],
    );
    let admin = controller.admin_address().await;
    let prometheus = Prometheus::start(&env.dir, &compressed_rules(12), &admin).await;
    let identity = env.region.clone();

    // Healthy: Prometheus sees every namespace synced and every family the issue names.
    eventually(
        "Prometheus sees 3 namespaces synced",
        Duration::from_secs(40),
        || async {
            let result = prometheus.query(r#"sum(ecr_pull_secrets_namespaces{state="synced"})"#);
            (result.first()?["value"][1].as_str()? == "3").then_some(())
        },
    )
    .await;
    for query in [
        "ecr_pull_secrets_token_expiry_timestamp_seconds",
        "ecr_pull_secrets_token_last_refresh_timestamp_seconds",
        "ecr_pull_secrets_token_refresh_consecutive_failures",
        "ecr_pull_secrets_aws_get_authorization_token_calls_total",
        "ecr_pull_secrets_writes_total",
        "ecr_pull_secrets_reconcile_duration_seconds_count",
        "ecr_pull_secrets_write_limiter_wait_seconds_count",
        "ecr_pull_secrets_queue_depth",
        "ecr_pull_secrets_leader",
        "ecr_pull_secrets_leadership_transitions_total",
        "ecr_pull_secrets_build_info",
    ] {
        assert!(
            !prometheus.query(query).is_empty(),
            "Prometheus has no {query}"
        );
    }
    // A full token lifetime (two refreshes) without either alert.
    let quiet_until = std::time::Instant::now() + Duration::from_secs(45);
    while std::time::Instant::now() < quiet_until {
        let alerts = prometheus.alerts();
        assert!(
            !alerts
                .iter()
                .any(|(name, _, _)| name == "EcrPullSecretsRefreshFailing"
                    || name == "EcrPullSecretsTokenExpiringSoon"),
            "an alert while healthy: {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Outage: every call fails. Refresh failing fires at the first failed refresh, expiring
    // soon once the last good token has under 12 s left, and the flag-configured secret's Ready
    // verdict (TokenRefreshFailing) makes ResourceNotReady fire for `(flags)`.
    env.set_emulator(&json!({ "ttl_seconds": 40, "fail": "5xx" }));
    eventually(
        "RefreshFailing, TokenExpiringSoon and ResourceNotReady firing",
        Duration::from_secs(60),
        || async {
            (prometheus.firing("EcrPullSecretsRefreshFailing") == [identity.clone()]
                && prometheus.firing("EcrPullSecretsTokenExpiringSoon") == [identity.clone()]
                && prometheus.firing("EcrPullSecretsResourceNotReady") == ["(flags)"])
            .then_some(())
        },
    )
    .await;

    // Recovery: the next retry succeeds and the three alerts resolve.
    env.set_emulator(&json!({ "ttl_seconds": 40 }));
    eventually(
        "the alerts resolved after recovery",
        Duration::from_secs(150),
        || async {
            let alerts = prometheus.alerts();
            (!alerts.iter().any(|(name, _, _)| {
                name == "EcrPullSecretsRefreshFailing"
                    || name == "EcrPullSecretsTokenExpiringSoon"
                    || name == "EcrPullSecretsResourceNotReady"
            }))
            .then_some(())
        },
    )
    .await;
    assert!(
        !prometheus
            .query("ecr_pull_secrets_token_refresh_failures_total")
            .is_empty(),
        "the outage counted failures by class"
    );

    // The controller gone: EcrPullSecretsAbsent fires.
    drop(controller);
    eventually(
        "EcrPullSecretsAbsent firing",
        Duration::from_secs(30),
        || async { (!prometheus.firing("EcrPullSecretsAbsent").is_empty()).then_some(()) },
    )
    .await;
    delete_namespaces(&client, &namespaces).await;
}

#[tokio::test]
async fn json_debug_logs_carry_decisions_but_no_token_or_key() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("logs");
    let namespaces: Vec<String> = (0..2).map(|i| format!("{p}-{i}")).collect();
    for ns in &namespaces {
        create_namespace(&client, ns).await;
    }
    let system = format!("{p}-system");
    create_namespace(&client, &system).await;
    put_credentials(
        &client,
        &system,
        "aws",
        "AKIALOGTEST000000001",
        "log-test-secret-access-key-0123456789",
    )
    .await;
    // Short tokens so the run sees refreshes; one failed call on the way.
    env.set_emulator(&json!({ "ttl_seconds": 10 }));
    let secret_name = format!("pull-{p}");
    let recorder = Recorder::start(&client, &secret_name);
    let mut controller = env.controller(
        &p,
        &[
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--secret-name",
            &secret_name,
            "--target-namespaces",
            &namespaces.join(","),
            "--namespace",
            &system,
            "--credentials-secret",
            "aws",
            "--ecr-public",
        ],
    );
    eventually(
        "three token generations in the first namespace",
        Duration::from_secs(60),
        || async { (recorder.tokens_in(&namespaces[0]).len() >= 3).then_some(()) },
    )
    .await;
    env.set_emulator(&json!({ "ttl_seconds": 10, "fail": "throttle", "count": 1 }));
    eventually(
        "a throttled call, logged",
        Duration::from_secs(30),
        || async {
            controller
                .log_text()
                .contains("token refresh failed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(controller.terminate(Duration::from_secs(20)), Some(0));

    let text = controller.log_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages = |m: &str| lines.iter().filter(|l| l["message"] == m).count();
    assert!(messages("fetched ECR token") >= 4, "token fetches logged");
    assert!(messages("wrote pull secret") >= 6, "writes logged");
    assert!(messages("token refresh failed; keeping the last good token") >= 1);
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "debug level was on"
    );
    // Debug logs of every crate and still nothing secret (the check the harness runs on every
    // controller log, here made explicit), though the tokens and the key were all in play.
    assert!(!recorder.tokens_in(&namespaces[0]).is_empty());
    assert_eq!(leaked_secrets(&text), Vec::<String>::new());
    for token in recorder.tokens_in(&namespaces[0]) {
        assert!(!text.contains(&token), "a token password is in the log");
    }
    delete_namespaces(&client, &namespaces).await;
    delete_namespaces(&client, std::slice::from_ref(&system)).await;
}

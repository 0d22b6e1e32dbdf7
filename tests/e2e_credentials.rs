//! End to end: the credentials Secret (issue 14, points 1 and 10): a refused list or watch
//! backs off and says which verb to grant, an API-server outage does not flood the log, and
//! unusable keys are refused by name. Run through
//! `tests/testenv.sh run -- cargo test --test e2e_credentials -- --test-threads=1`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use ecr_pull_secrets::core::crd::EcrPullSecret;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// LISTs of Secrets by the user of FlowSchema `name` (see [`count_lists`]) the API server has
/// let through so far, refused or not, from its own metrics (read as admin): what the
/// controller costs it, whatever it logs.
fn lists(name: &str) -> f64 {
    let series =
        format!("apiserver_flowcontrol_dispatched_requests_total{{flow_schema=\"{name}\",");
    kubectl(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A FlowSchema `name` that takes `who`'s LISTs of Secrets in `namespace`: priority and
/// fairness dispatches a request before it is authorised, so its metric counts refused ones
/// too (apiserver_request_total does not: a 403 never reaches the handler).
fn count_lists(env: &TestEnv, name: &str, who: &str, namespace: &str) {
    apply(
        env,
        &format!("flowschema-{name}"),
        &format!(
            r#"apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {name}}}
spec:
  matchingPrecedence: 500
  priorityLevelConfiguration: {{name: global-default}}
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects: [{{kind: User, user: {{name: {who}}}}}]
    resourceRules: [{{verbs: [list], apiGroups: [""], resources: [secrets], namespaces: [{namespace}]}}]
"#
        ),
    );
    // In force once the API server's flow-control configuration has taken it up.
    let status = format!("flowschema/{name}");
    let until = Instant::now() + Duration::from_secs(30);
    while kubectl(&[
        "get",
        &status,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Dangling\")].status}",
    ]) != "False"
    {
        assert!(Instant::now() < until, "FlowSchema {name} not taken up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Applies `yaml` as admin.
fn apply(env: &TestEnv, name: &str, yaml: &str) {
    let path = env.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    kubectl(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
}

fn user(name: &str) -> String {
    testenv_user(name)
}

/// RBAC for user `who`: what the controller needs for `secret` (flags or an EcrPullSecret), and
/// in `system` its Lease and `verbs` on the credentials Secret `aws`.
fn grant(env: &TestEnv, p: &str, who: &str, system: &str, secret: &str, verbs: &[&str]) {
    let verbs = serde_json::to_string(verbs).unwrap();
    apply(
        env,
        &format!("rbac-{p}"),
        &format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {p}}}
rules:
- {{apiGroups: [""], resources: [namespaces], verbs: [get, list, watch]}}
- {{apiGroups: [""], resources: [secrets], verbs: [create]}}
- {{apiGroups: [""], resources: [secrets], resourceNames: [{secret}], verbs: [get, list, watch, patch, delete]}}
- {{apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}}
- {{apiGroups: [ecr-pull-secrets.io], resources: [ecrpullsecrets], verbs: [get, list, watch, patch]}}
- {{apiGroups: [ecr-pull-secrets.io], resources: [ecrpullsecrets/status], verbs: [patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {p}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {p}}}
subjects: [{{kind: User, name: {who}, apiGroup: rbac.authorization.k8s.io}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: controller, namespace: {system}}}
rules:
- {{apiGroups: [""], resources: [secrets], resourceNames: [aws], verbs: {verbs}}}
- {{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [create]}}
- {{apiGroups: [coordination.k8s.io], resources: [leases], resourceNames: [lease-{p}], verbs: [get, list, watch, update]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: controller, namespace: {system}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: controller}}
subjects: [{{kind: User, name: {who}, apiGroup: rbac.authorization.k8s.io}}]
"#
        ),
    );
}

/// One sample of the controller's metrics, 0 when absent.
async fn metric(controller: &Controller, name: &str) -> f64 {
    let address = controller.admin_address().await;
    let (_, body) = http_get(&address, "/metrics").await.expect("metrics");
    sample(&body, name).unwrap_or(0.0)
}

const FORBIDDEN: &str = "ecr_pull_secrets_credentials_watch_failures_total{reason=\"forbidden\"}";
const UNAVAILABLE: &str =
    "ecr_pull_secrets_credentials_watch_failures_total{reason=\"unavailable\"}";
const INVALID: &str = "ecr_pull_secrets_credentials_watch_failures_total{reason=\"invalid\"}";

#[tokio::test]
async fn may_get_but_not_list_the_credentials_secret_few_lists_and_the_verb_named() {
    let Some(env) = testenv() else { return };
    let admin = client().await;
    let p = unique("creds-rbac");
    let (system, app) = (format!("{p}-system"), format!("{p}-app"));
    create_namespace(&admin, &system).await;
    create_namespace(&admin, &app).await;
    put_credentials(
        &admin,
        &system,
        "aws",
        "AKIATESTENV000000001",
        "rbac-secret-key",
    )
    .await;
    let who = format!("controller-{p}");
    let kubeconfig = user(&who);
    let secret = format!("pull-{p}");
    grant(&env, &p, &who, &system, &secret, &["get"]);
    count_lists(&env, &p, &who, &system);
    let mut controller = env.controller_with_env(
        &p,
        &[
            "--namespace",
            &system,
            "--credentials-secret",
            "aws",
            "--secret-name",
            &secret,
            "--target-namespaces",
            &app,
            "--lease-name",
            &format!("lease-{p}"),
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    // `get` suffices to start and to fetch tokens with the keys read once.
    eventually(
        "the pull secret written with keys read by get",
        Duration::from_secs(30),
        || async { get_secret(&admin, &app, &secret).await },
    )
    .await;
    eventually(
        "the refused list in the log",
        Duration::from_secs(20),
        || async {
            controller
                .log_text()
                .contains("not allowed to list credentials Secret")
                .then_some(())
        },
    )
    .await;
    // The API server counts the refused LISTs (so the window below sees them too)...
    assert!(lists(&p) >= 1.0, "no LIST counted");
    // ... and over 10 s they stay few: the watch backs off, 0.8 s doubling to 30 s. Before,
    // this was about 4,800 LISTs a second.
    let window = Duration::from_secs(10);
    let (start, lines_before) = (lists(&p), controller.log_text().lines().count());
    tokio::time::sleep(window).await;
    let listed = lists(&p) - start;
    let lines = controller.log_text().lines().count() - lines_before;
    eprintln!(
        "refused LISTs of the credentials Secret in {window:?}: {listed}; log lines: {lines}"
    );
    assert!(listed <= 5.0, "{listed} refused LISTs in {window:?}");
    assert!(lines <= 5, "{lines} log lines in {window:?}");

    let log = controller.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("not allowed to list credentials Secret"))
        .unwrap();
    for part in [
        format!("credentials Secret {system}/aws"),
        format!(
            "grant get, list and watch on secrets with resourceNames [aws] in namespace {system}"
        ),
        "fieldSelector metadata.name=aws".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} missing in {line}");
    }
    let failures = metric(&controller, FORBIDDEN).await;
    assert!(failures >= 1.0, "forbidden failures counted: {failures}");

    // Granted list and watch: the watch recovers within the backoff (at most about a minute).
    grant(&env, &p, &who, &system, &secret, &["get", "list", "watch"]);
    eventually(
        "the watch working again",
        Duration::from_secs(70),
        || async {
            controller
                .log_text()
                .contains("watching the credentials Secret works again")
                .then_some(())
        },
    )
    .await;
    assert_eq!(controller.terminate(Duration::from_secs(10)), Some(0));
    let _ = Command::new("kubectl")
        .args(["delete", "clusterrole,clusterrolebinding,flowschema", &p])
        .output();
    delete_namespaces(&admin, &[system, app]).await;
}

/// A TCP proxy to the API server that the test can close and open again. Closed, it drops every
/// connection and refuses new ones: what a client sees of a killed API server, without killing
/// the one the other tests of this run share.
struct Proxy {
    address: String,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (open, mut is_open) = watch::channel(true);
        let bind_to = address.clone();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let Some(accepting) = listener.take() else {
                    // Closed: wait to be opened, then listen on the same address again.
                    if is_open.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    listener = Some(TcpListener::bind(&bind_to).await.expect("rebind"));
                    continue;
                };
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = accepting.accept() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            let upstream = upstream.clone();
                            connections.spawn(async move {
                                if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                        closed = is_open.wait_for(|o| !*o) => {
                            if closed.is_err() {
                                return;
                            }
                            break;
                        }
                    }
                }
                drop(accepting);
                connections.abort_all();
            }
        });
        Proxy { address, open }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

/// The admin kubeconfig pointed at `address` instead of the API server; and the API server's
/// `host:port`.
fn kubeconfig_via(address: &str, dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let original = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let upstream = original
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .unwrap()
        .trim()
        .trim_start_matches("https://")
        .to_string();
    let path = dir.join(format!("via-{}.kubeconfig", address.replace(':', "-")));
    std::fs::write(&path, original.replace(&upstream, address)).unwrap();
    (path, upstream)
}

// Multi-threaded: the proxy must keep forwarding while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_does_not_flood_the_log() {
    let Some(env) = testenv() else { return };
    let admin = client().await;
    let p = unique("creds-outage");
    let (system, app) = (format!("{p}-system"), format!("{p}-app"));
    create_namespace(&admin, &system).await;
    create_namespace(&admin, &app).await;
    put_credentials(
        &admin,
        &system,
        "aws",
        "AKIATESTENV000000001",
        "outage-secret-key",
    )
    .await;
    let (_, upstream) = kubeconfig_via("127.0.0.1:1", &env.dir);
    let proxy = Proxy::start(upstream).await;
    let (kubeconfig, _) = kubeconfig_via(&proxy.address, &env.dir);
    let secret = format!("pull-{p}");
    let mut controller = env.controller_with_env(
        &p,
        &[
            "--namespace",
            &system,
            "--credentials-secret",
            "aws",
            "--secret-name",
            &secret,
            "--target-namespaces",
            &app,
            // Leading through an outage longer than the default renew deadline (10 s).
            "--lease-duration",
            "60s",
            "--renew-deadline",
            "40s",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    eventually(
        "the pull secret written",
        Duration::from_secs(30),
        || async { get_secret(&admin, &app, &secret).await },
    )
    .await;
    let address = controller.admin_address().await;

    let outage = Duration::from_secs(15);
    let lines_before = controller.log_text().lines().count();
    proxy.set_open(false);
    let started = Instant::now();
    tokio::time::sleep(outage).await;
    let log = controller.log_text();
    let during: Vec<&str> = log.lines().skip(lines_before).collect();
    let credentials_lines = during
        .iter()
        .filter(|l| l.contains("credentials Secret"))
        .count();
    // Read while still cut off: the admin listener does not need the API server.
    let (_, body) = http_get(&address, "/metrics").await.expect("metrics");
    let unavailable = sample(&body, UNAVAILABLE).unwrap_or(0.0);
    proxy.set_open(true);
    eprintln!(
        "{:?} outage: {} log lines ({} about the credentials Secret), {unavailable} credentials watch failures counted",
        started.elapsed(),
        during.len(),
        credentials_lines
    );
    // Before the fix: 622,000 lines in 8 s. Now: the credentials watch logs a failure once
    // (and again only if it changes, or after 5 minutes), the other watches back off too.
    assert!(
        credentials_lines <= 2,
        "{credentials_lines} credentials lines:\n{}",
        during.join("\n")
    );
    assert!(
        during.len() <= 60,
        "{} lines in {outage:?}:\n{}",
        during.len(),
        during.join("\n")
    );
    assert!(
        (1.0..=10.0).contains(&unavailable),
        "{unavailable} failures counted in {outage:?}"
    );

    eventually(
        "the credentials watch working again",
        Duration::from_secs(70),
        || async {
            controller
                .log_text()
                .lines()
                .skip(lines_before)
                .any(|l| l.contains("watching the credentials Secret works again"))
                .then_some(())
        },
    )
    .await;
    assert!(
        controller.wait_exit(Duration::ZERO).is_none(),
        "still running"
    );
    assert_eq!(controller.terminate(Duration::from_secs(10)), Some(0));
    delete_namespaces(&admin, &[system, app]).await;
}

/// Replaces the credentials Secret's data with `pairs` as they are (no trimming, any size).
async fn put_raw_credentials(admin: &kube::Client, namespace: &str, pairs: &[(&str, Vec<u8>)]) {
    let api: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("aws".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                .collect(),
        ),
        ..Secret::default()
    };
    api.patch(
        "aws",
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&secret),
    )
    .await
    .expect("apply credentials Secret");
}

#[tokio::test]
async fn an_oversized_access_key_is_refused_by_name_at_start_and_at_runtime() {
    let Some(env) = testenv() else { return };
    let admin = client().await;
    let p = unique("creds-size");
    let (system, app) = (format!("{p}-system"), format!("{p}-app"));
    create_namespace(&admin, &system).await;
    create_namespace(&admin, &app).await;
    // About 1 MB: the most a Secret holds (1 MiB in all).
    let huge = vec![b'A'; 1_000_000];
    put_raw_credentials(
        &admin,
        &system,
        &[
            ("aws_access_key_id", huge.clone()),
            ("aws_secret_access_key", b"size-secret-key".to_vec()),
        ],
    )
    .await;
    let secret = format!("pull-{p}");
    let args = [
        "--namespace",
        &system,
        "--credentials-secret",
        "aws",
        "--secret-name",
        &secret,
        "--target-namespaces",
        &app,
    ];
    let mut refused = env.controller(&format!("{p}-start"), &args);
    assert_eq!(refused.wait_exit(Duration::from_secs(20)), Some(1));
    let log = refused.log_text();
    assert!(
        log.contains(&format!(
            "credentials Secret {system}/aws: aws_access_key_id has 1000000 bytes; AWS access key IDs are 16 to 128 characters"
        )),
        "{log}"
    );
    assert!(log.contains("kubectl -n"), "the fix: {log}");
    assert!(!log.contains(&"A".repeat(64)), "the log echoes the key");
    assert!(log.len() < 4096, "{} bytes of log", log.len());

    // Valid keys: it runs. Then the oversized key again, at runtime: refused by name, the
    // previous keys stay in use, and the failure is counted.
    put_raw_credentials(
        &admin,
        &system,
        &[
            ("aws_access_key_id", b"AKIATESTENV000000001".to_vec()),
            ("aws_secret_access_key", b"size-secret-key".to_vec()),
        ],
    )
    .await;
    // Short tokens: fetches every few seconds, so the keys in use show soon after the edit.
    env.set_emulator(&json!({ "ttl_seconds": 10 }));
    let mut controller = env.controller(&p, &args);
    eventually(
        "the pull secret written",
        Duration::from_secs(30),
        || async { get_secret(&admin, &app, &secret).await },
    )
    .await;
    put_raw_credentials(
        &admin,
        &system,
        &[
            ("aws_access_key_id", huge),
            ("aws_secret_access_key", b"size-secret-key".to_vec()),
        ],
    )
    .await;
    eventually(
        "the invalid Secret in the log",
        Duration::from_secs(20),
        || async {
            controller
                .log_text()
                .contains("credentials Secret is invalid; keeping the previous keys")
                .then_some(())
        },
    )
    .await;
    let log = controller.log_text();
    assert!(log.contains("aws_access_key_id has 1000000 bytes"), "{log}");
    assert!(!log.contains(&"A".repeat(64)), "the log echoes the key");
    assert!(metric(&controller, INVALID).await >= 1.0);
    // Still fetching with the previous keys.
    let calls = env.aws_calls();
    eventually(
        "a fetch after the edit",
        Duration::from_secs(30),
        || async { (env.aws_calls() > calls).then_some(()) },
    )
    .await;
    let last = env.call_log().pop().unwrap();
    assert_eq!(last["access_key_id"], "AKIATESTENV000000001");
    assert_eq!(last["outcome"], "ok", "{last}");
    env.set_emulator(&json!({}));
    assert_eq!(controller.terminate(Duration::from_secs(10)), Some(0));
    delete_namespaces(&admin, &[system, app]).await;
}

#[tokio::test]
async fn a_resource_whose_credentials_secret_may_not_be_listed_is_not_ready_until_granted() {
    let Some(env) = testenv() else { return };
    let admin = client().await;
    install_crd();
    let p = unique("creds-resource");
    let (system, app) = (format!("{p}-system"), format!("{p}-app"));
    create_namespace(&admin, &system).await;
    create_namespace(&admin, &app).await;
    put_credentials(
        &admin,
        &system,
        "aws",
        "AKIATESTENV000000001",
        "resource-secret-key",
    )
    .await;
    let who = format!("controller-{p}");
    let kubeconfig = user(&who);
    let secret = format!("pull-{p}");
    grant(&env, &p, &who, &system, &secret, &["get"]);
    let api: Api<EcrPullSecret> = Api::all(admin.clone());
    let spec = json!({
        "secretName": secret,
        "registries": [{"accountId": "123456789012", "region": "us-east-1"}],
        "namespaces": {"include": [app]},
        "credentials": {"secretRef": {"name": "aws"}},
    });
    api.create(&PostParams::default(), &ecr_pull_secret(&p, spec))
        .await
        .unwrap();
    // Resources only: no flag-configured secret (AWS_REGION empty).
    let mut controller = env.controller_with_env(
        &p,
        &[
            "--resources",
            "--namespace",
            &system,
            "--lease-name",
            &format!("lease-{p}"),
        ],
        &[("KUBECONFIG", kubeconfig.as_str()), ("AWS_REGION", "")],
    );
    // It writes (keys read by get), but is not Ready: the verb to grant is in its status.
    eventually(
        "the pull secret written",
        Duration::from_secs(30),
        || async { get_secret(&admin, &app, &secret).await },
    )
    .await;
    let message = eventually(
        "Degraded, Forbidden, naming the verb",
        Duration::from_secs(30),
        || async {
            let (status, reason, message) =
                resource_condition(&api.get(&p).await.ok()?, "Degraded")?;
            (status == "True" && reason == "Forbidden").then_some(message)
        },
    )
    .await;
    assert!(
        message.contains(&format!(
            "not allowed to list credentials Secret {system}/aws"
        )) && message.contains("resourceNames [aws]"),
        "{message}"
    );
    let resource = api.get(&p).await.unwrap();
    assert_eq!(resource_condition(&resource, "Ready").unwrap().0, "False");
    let ready_metric = format!("ecr_pull_secrets_resource_ready{{resource=\"{p}\"}}");
    assert_eq!(metric(&controller, &ready_metric).await, 0.0);
    assert!(metric(&controller, FORBIDDEN).await >= 1.0);

    // Granted: Ready within the backoff.
    grant(&env, &p, &who, &system, &secret, &["get", "list", "watch"]);
    eventually("Ready after the grant", Duration::from_secs(70), || async {
        let (status, reason, _) = resource_condition(&api.get(&p).await.ok()?, "Ready")?;
        (status == "True" && reason == "Synced").then_some(())
    })
    .await;
    assert_eq!(metric(&controller, &ready_metric).await, 1.0);
    api.delete(&p, &Default::default()).await.unwrap();
    eventually("the resource deleted", Duration::from_secs(30), || async {
        api.get_opt(&p).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(controller.terminate(Duration::from_secs(10)), Some(0));
    let _ = Command::new("kubectl")
        .args(["delete", "clusterrole,clusterrolebinding", &p])
        .output();
    delete_namespaces(&admin, &[system, app]).await;
}

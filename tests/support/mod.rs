//! Shared end-to-end harness: the real binary against `tests/testenv.sh` (kube-apiserver, etcd
//! and the ECR emulator). Waits use deadlines, never fixed sleeps.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The running test environment, from the variables `tests/testenv.sh up` exports.
pub struct TestEnv {
    pub dir: PathBuf,
    pub control: PathBuf,
    pub calls: PathBuf,
    pub call_log: PathBuf,
    pub region: String,
}

/// The environment, or `None` (skip) outside CI. With `CI=true` a missing environment fails
/// the test: CI must never pass by skipping.
pub fn testenv() -> Option<TestEnv> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let vars = (
        var("TESTENV_DIR"),
        var("KUBECONFIG"),
        var("ECR_EMULATOR_CONTROL"),
        var("ECR_EMULATOR_CALLS"),
        var("ECR_EMULATOR_LOG"),
    );
    let (Some(dir), Some(_), Some(control), Some(calls), Some(call_log)) = vars else {
        let message = "end-to-end environment missing: run through `tests/testenv.sh run -- cargo test --test e2e_...` \
                       (or `make test`)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
        return None;
    };
    let env = TestEnv {
        dir: dir.into(),
        control: control.into(),
        calls: calls.into(),
        call_log: call_log.into(),
        region: var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
    };
    env.set_emulator(&serde_json::json!({}));
    Some(env)
}

/// For programs that start their own environment (the scale benchmark): run this program again
/// under `tests/testenv.sh run` (up, the program, always down) and exit with its code, unless
/// it already runs in one. Call it before starting a runtime; it returns only inside the
/// environment, where [`testenv`] finds it.
pub fn reexec_in_testenv() {
    if std::env::var_os("TESTENV_DIR").is_some_and(|v| !v.is_empty()) {
        return;
    }
    let program = std::env::current_exe().expect("the path of this program");
    eprintln!(
        "starting the test environment: tests/testenv.sh run -- {}",
        program.display()
    );
    let status = Command::new(repo().join("tests/testenv.sh"))
        .args(["run", "--"])
        .arg(program)
        .args(std::env::args_os().skip(1))
        .status()
        .expect("run tests/testenv.sh");
    if !status.success() {
        eprintln!(
            "{status} under tests/testenv.sh run; if the environment did not start, run \
             `tests/testenv.sh build` first"
        );
    }
    std::process::exit(status.code().unwrap_or(1));
}

impl TestEnv {
    /// Replaces the emulator's control file atomically (it is re-read on every call).
    pub fn set_emulator(&self, control: &Value) {
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(control).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    /// GetAuthorizationToken calls the emulator has answered so far.
    pub fn aws_calls(&self) -> u64 {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The emulator's call log: one JSON object per call.
    pub fn call_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.call_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The call that issued the token whose password hashes to `sha`.
    pub fn issuing_call(&self, password: &str) -> Option<Value> {
        let sha = sha256_hex(password.as_bytes());
        self.call_log()
            .into_iter()
            .find(|c| c["password_sha256"].as_str() == Some(sha.as_str()))
    }

    pub fn default_registry(&self) -> String {
        format!("123456789012.dkr.ecr.{}.amazonaws.com", self.region)
    }

    /// Starts the controller binary of this build's profile (debug under `cargo test`, release
    /// under `cargo bench`); it is stopped when the guard drops.
    pub fn controller(&self, name: &str, args: &[&str]) -> Controller {
        self.controller_with_env(name, args, &[])
    }

    pub fn controller_with_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Controller {
        let log = self.dir.join(format!("controller-{name}.log"));
        let lease = format!("lease-{}", name.to_ascii_lowercase());
        let mut defaults: Vec<&str> = Vec::new();
        if !args.contains(&"--lease-name") {
            defaults.extend(["--lease-name", &lease]);
        }
        if !args.contains(&"--admin-address") {
            defaults.extend(["--admin-address", "127.0.0.1:0"]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_ecr-pull-secrets"))
            .args(["run"])
            .args(args)
            .args(&defaults)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start the controller binary");
        Controller {
            child: Some(child),
            log,
        }
    }
}

/// A plain HTTP GET: (status, body), or None if nothing answers in time.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .ok()?
    .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of one sample line of a metrics exposition (`name` includes any labels).
pub fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A controller process under test.
pub struct Controller {
    child: Option<Child>,
    pub log: PathBuf,
}

/// A process's peak and current RSS, its anonymous (heap, stacks) and file-backed (the mapped
/// binary) parts, all in KiB, and its CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub peak: u64,
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub cpu_seconds: f64,
}

impl Controller {
    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the controller is running").id()
    }

    /// Memory and CPU of the running process, from /proc.
    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: f64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
            .unwrap_or(0.0);
        Usage {
            peak: kib("VmHWM:"),
            rss: kib("VmRSS:"),
            anon: kib("RssAnon:"),
            file: kib("RssFile:"),
            cpu_seconds: ticks / clock_ticks(),
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin listener's address, from the start-up log line.
    pub async fn admin_address(&self) -> String {
        eventually(
            "the admin address in the log",
            Duration::from_secs(20),
            || async {
                let log = self.log_text();
                let line = log.lines().find(|l| l.contains("admin server listening"))?;
                Some(
                    line.split("address=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .to_string(),
                )
            },
        )
        .await
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        signal(child.id(), "TERM");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            signal(child.id(), sig);
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            // Every controller run of every test doubles as a check that logs never carry
            // secrets.
            let leaks = leaked_secrets(&self.log_text());
            assert!(
                leaks.is_empty(),
                "controller log {} leaks secrets: {leaks:?}",
                self.log.display()
            );
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "--- controller log {} (last 40 lines) ---",
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A unique prefix so tests never see each other's namespaces.
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random::<u32>() % 1_000_000;
    format!("{prefix}-{n:06}")
}

pub async fn client() -> Client {
    Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

pub async fn create_namespace(client: &Client, name: &str) {
    create_namespace_labeled(client, name, BTreeMap::new()).await;
}

pub async fn create_namespace_labeled(
    client: &Client,
    name: &str,
    labels: BTreeMap<String, String>,
) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// Namespaces stay Terminating without a controller-manager; delete is still right for hygiene.
pub async fn delete_namespaces(client: &Client, names: &[String]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}

pub async fn get_secret(client: &Client, namespace: &str, name: &str) -> Option<Secret> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.expect("get secret")
}

/// Polls until `check` returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One observed version of a managed secret.
#[derive(Debug, Clone)]
pub struct Observed {
    pub at: SystemTime,
    pub namespace: String,
    pub secret: PullSecret,
}

/// Records every version of every Secret named `secret_name` as the API server publishes it;
/// `decode` panics (failing the test through `Recorder::check`) on invalid content.
pub struct Recorder {
    pub versions: Arc<Mutex<Vec<Observed>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub fn start(client: &Client, secret_name: &str) -> Recorder {
        let versions: Arc<Mutex<Vec<Observed>>> = Arc::default();
        let api: Api<Secret> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={secret_name}"));
        let sink = versions.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) = event
                {
                    let entry = Observed {
                        at: SystemTime::now(),
                        namespace: secret.namespace().unwrap_or_default(),
                        secret: decode(&secret),
                    };
                    sink.lock().unwrap().push(entry);
                }
            }
        });
        Recorder { versions, task }
    }

    pub fn snapshot(&self) -> Vec<Observed> {
        assert!(
            !self.task.is_finished(),
            "the recorder stopped: a secret version failed validation"
        );
        self.versions.lock().unwrap().clone()
    }

    /// Distinct tokens seen in `namespace`, in order of appearance.
    pub fn tokens_in(&self, namespace: &str) -> Vec<String> {
        let mut tokens: Vec<String> = Vec::new();
        for o in self.snapshot().iter().filter(|o| o.namespace == namespace) {
            if tokens.last() != Some(&o.secret.password) {
                tokens.push(o.secret.password.clone());
            }
        }
        tokens
    }

    /// Asserts no version was expired when seen and each replacement came before the replaced
    /// token's expiry; returns the distinct tokens seen.
    pub fn assert_always_valid(&self, env: &TestEnv) -> BTreeSet<String> {
        let seen = self.snapshot();
        let namespaces: BTreeSet<&str> = seen.iter().map(|o| o.namespace.as_str()).collect();
        let mut tokens = BTreeSet::new();
        for ns in namespaces {
            let versions: Vec<&Observed> = seen.iter().filter(|o| o.namespace == ns).collect();
            for version in &versions {
                assert!(
                    version.at < version.secret.expires_at,
                    "{ns} held an expired token at {:?}",
                    version.at
                );
                let call = env
                    .issuing_call(&version.secret.password)
                    .expect("token issued by the emulator");
                let issued = call["expires_at"].as_f64().unwrap();
                let annotated = version
                    .secret
                    .expires_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                assert!(
                    issued - annotated > -1.0,
                    "{ns}: expiry annotation is no later than the token's expiry"
                );
                tokens.insert(version.secret.password.clone());
            }
            for pair in versions.windows(2) {
                if pair[0].secret.password != pair[1].secret.password {
                    assert!(
                        pair[1].at < pair[0].secret.expires_at,
                        "{ns}: token replaced at {:?}, after its expiry {:?}",
                        pair[1].at,
                        pair[0].secret.expires_at
                    );
                }
            }
        }
        tokens
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// AWS secret keys the tests handed to the controller, for [`leaked_secrets`].
static SECRET_KEYS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What of a token or key shows in `text` (named, never quoted): the emulator's passwords
/// (`emu-<32 hex>`), base64 `AWS:emu-...` auth strings, a base64 docker config, and every AWS
/// secret key or session token the tests used.
pub fn leaked_secrets(text: &str) -> Vec<String> {
    let mut leaks = Vec::new();
    let password = text.match_indices("emu-").any(|(at, _)| {
        let rest = &text.as_bytes()[at + 4..];
        rest.len() >= 32 && rest[..32].iter().all(u8::is_ascii_hexdigit)
    });
    if password {
        leaks.push("an ECR token password (emu-...)".to_string());
    }
    // base64("AWS:em") and base64("{\"auths\":"): the auth string and the whole docker config.
    for (needle, what) in [
        ("QVdTOmVt", "a base64 AWS:<password> auth string"),
        ("eyJhdXRocyI6", "a base64 docker config"),
    ] {
        if text.contains(needle) {
            leaks.push(what.to_string());
        }
    }
    let mut keys: Vec<String> = SECRET_KEYS.lock().unwrap().clone();
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        if let Ok(value) = std::env::var(var) {
            keys.push(value);
        }
    }
    for key in keys.iter().filter(|k| k.len() >= 8) {
        if text.contains(key.as_str()) {
            leaks.push(format!("an AWS secret key ({} characters)", key.len()));
        }
    }
    leaks
}

/// Creates (or replaces) the AWS credentials Secret `name` in `namespace`.
pub async fn put_credentials(
    client: &Client,
    namespace: &str,
    name: &str,
    key_id: &str,
    secret_key: &str,
) {
    SECRET_KEYS.lock().unwrap().push(secret_key.to_string());
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([
            ("aws_access_key_id".to_string(), format!("{key_id}\n")),
            ("aws_secret_access_key".to_string(), secret_key.to_string()),
        ])),
        ..Secret::default()
    };
    let params = PatchParams::apply("e2e-test").force();
    api.patch(name, &params, &Patch::Apply(&secret))
        .await
        .expect("apply credentials Secret");
}

/// Creates an Opaque Secret `name` that is not ours (no managed label), with `data`.
pub async fn create_foreign_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    data: BTreeMap<String, k8s_openapi::ByteString>,
) -> Secret {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    api.create(&PostParams::default(), &secret)
        .await
        .expect("create a foreign Secret")
}

/// What a pull secret holds, decoded and checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSecret {
    pub hosts: Vec<String>,
    /// The first host's password.
    pub password: String,
    /// Every host's password.
    pub passwords: BTreeMap<String, String>,
    pub expires_at: SystemTime,
    pub resource_version: String,
}

/// Decodes our Secret; panics if it is not a valid dockerconfigjson Secret.
pub fn decode(secret: &Secret) -> PullSecret {
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let data = secret.data.as_ref().expect("data");
    let config: Value =
        serde_json::from_slice(&data[".dockerconfigjson"].0).expect("config is JSON");
    let auths = config["auths"].as_object().expect("auths object");
    assert!(!auths.is_empty(), "auths is empty");
    let mut passwords = BTreeMap::new();
    for (host, entry) in auths {
        assert!(!host.contains("://"), "host {host} has a scheme");
        assert_eq!(entry["username"], "AWS");
        let password = entry["password"].as_str().unwrap().to_string();
        assert!(!password.is_empty());
        let auth = STANDARD.decode(entry["auth"].as_str().unwrap()).unwrap();
        assert_eq!(auth, format!("AWS:{password}").into_bytes());
        passwords.insert(host.clone(), password);
    }
    let expires = secret.annotations()["ecr-pull-secrets.io/expires-at"].clone();
    PullSecret {
        hosts: auths.keys().cloned().collect(),
        password: passwords.values().next().unwrap().clone(),
        passwords,
        expires_at: humantime::parse_rfc3339(&expires).expect("expires-at annotation"),
        resource_version: secret.resource_version().unwrap_or_default(),
    }
}

/// A client-certificate user (no groups) from `tests/testenv.sh user`: its kubeconfig's path.
pub fn testenv_user(name: &str) -> String {
    let out = Command::new(repo().join("tests/testenv.sh"))
        .args(["user", name])
        .output()
        .expect("tests/testenv.sh user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CEL list of string literals (`['a', 'b']` or `["a","b"]`) as its strings: the admission
/// policy's names.
pub fn cel_strings(list: &str) -> Vec<String> {
    let inner = list
        .trim()
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{list:?} is not a CEL list"));
    inner
        .split(',')
        .map(|item| item.trim().trim_matches(['\'', '"']).to_string())
        .filter(|item| !item.is_empty())
        .collect()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs kubectl (the testenv's, on PATH); its stdout, or a panic with its stderr.
pub fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A kubeconfig for ServiceAccount `namespace/name`: the admin kubeconfig's cluster and a token
/// from `kubectl create token`, so the holder is bound only by that account's RBAC.
pub fn service_account_kubeconfig(dir: &Path, namespace: &str, name: &str) -> PathBuf {
    let token = kubectl(&["create", "token", name, "-n", namespace, "--duration", "1h"]);
    let admin = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let field = |key: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .to_string()
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
         users:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context:\n    cluster: testenv\n    user: sa\n    namespace: {namespace}\n\
         current-context: sa\n",
        field("server: "),
        field("certificate-authority-data: "),
        token.trim()
    );
    let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&path, config).unwrap();
    path
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// Applies the CRDs in `file` (relative to the repository) and waits until `crds` are
/// established.
pub fn install_crds(file: &str, crds: &[&str]) {
    let path = repo().join(file);
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        path.to_str().unwrap(),
    ]);
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=30s"];
    wait.extend_from_slice(crds);
    kubectl(&wait);
}

/// The EcrPullSecret CRD from deploy/crd/, installed (or updated) and established.
pub fn install_crd() {
    install_crds(
        "deploy/crd/ecrpullsecrets.yaml",
        &["crd/ecrpullsecrets.ecr-pull-secrets.io"],
    );
}

/// An EcrPullSecret named `name` with `spec` (JSON, camelCase as in YAML).
pub fn ecr_pull_secret(name: &str, spec: Value) -> ecr_pull_secrets::core::crd::EcrPullSecret {
    ecr_pull_secrets::core::crd::EcrPullSecret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: serde_json::from_value(spec).expect("a valid spec"),
        status: None,
    }
}

/// Status, reason and message of a resource's condition `type_`, once it has one.
pub fn resource_condition(
    resource: &ecr_pull_secrets::core::crd::EcrPullSecret,
    type_: &str,
) -> Option<(String, String, String)> {
    resource
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

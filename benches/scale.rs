//! Scale benchmark on the real control plane (kube-apiserver + etcd + the ECR emulator, started
//! here through `tests/testenv.sh up`), with the release build of the controller:
//!
//!   cargo bench --bench scale -- --namespaces 2000 --json target/scale.json
//!
//! It measures, in one run: the write floor (what this API server allows: server-side applies of
//! an equal Secret by a plain client loop at the controller's concurrency), the controller's cold
//! start to every namespace holding a valid secret, new-namespace latency, token rotation,
//! the steady state (writes, lists and requests per minute with nothing changing), the
//! controller's peak RSS and CPU, AWS calls per refresh, and leader failover after SIGKILL.
//! It prints a table and writes a JSON report. docs/performance.md explains the method.

// The end-to-end tests' harness: the environment, the controller processes, the CRD.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{TestEnv, create_namespace, ecr_pull_secret, http_get, install_crd};

const SECRET: &str = "bench-pull";
const PREFIX: &str = "scale";
const CONCURRENCY: usize = 16;

#[derive(Parser, Debug)]
#[command(about = "Scale benchmark of ecr-pull-secrets on the real control plane")]
struct Args {
    /// Namespaces to create and serve.
    #[arg(long, default_value_t = 2000)]
    namespaces: usize,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// New-namespace latency samples.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Length of the steady-state window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Then serve this many EcrPullSecret resources, each selecting every namespace under its
    /// own secret name, with a fresh controller: cold start and memory per resource.
    #[arg(long, default_value_t = 0)]
    resources: usize,
    /// Regions (1 to 3: us-east-1, eu-west-1, ap-south-1), each a configured registry with its
    /// own token: writes per refresh cycle with several identities.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    regions: u8,
    /// cargo bench passes --bench; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The password a pull secret carries, if its docker config is valid.
fn password(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?.get(".dockerconfigjson")?;
    let config: Value = serde_json::from_slice(&data.0).ok()?;
    let auth = config["auths"].as_object()?.values().next()?["auth"].as_str()?;
    let decoded = String::from_utf8(STANDARD.decode(auth).ok()?).ok()?;
    let password = decoded.strip_prefix("AWS:")?;
    (!password.is_empty()).then(|| password.to_string())
}

/// Every change to our pull secrets, with the time it was seen.
#[derive(Clone, Default)]
struct Seen {
    /// namespace -> (password, first seen with it)
    current: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    /// When each change (a namespace getting a new password) was seen, in order.
    log: Arc<Mutex<Vec<Instant>>>,
}

impl Seen {
    fn start(client: &Client) -> Seen {
        let seen = Seen::default();
        let api: Api<Secret> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={SECRET}"));
        let current = seen.current.clone();
        let log = seen.log.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                if let Ok(watcher::Event::Delete(s)) = &event
                    && let Some(ns) = s.namespace()
                {
                    current.lock().unwrap().remove(&ns);
                    continue;
                }
                let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event else {
                    continue;
                };
                let (Some(ns), Some(password)) = (s.namespace(), password(&s)) else {
                    continue;
                };
                let mut current = current.lock().unwrap();
                if current.get(&ns).map(|(p, _)| p) != Some(&password) {
                    current.insert(ns, (password, now));
                    log.lock().unwrap().push(now);
                }
            }
        });
        seen
    }

    /// Waits until every namespace in `names` holds `password` (any, if None); the latest
    /// time one of them got it.
    async fn all(&self, names: &[String], password: Option<&str>, deadline: Duration) -> Instant {
        let until = Instant::now() + deadline;
        loop {
            {
                let current = self.current.lock().unwrap();
                let times: Option<Vec<Instant>> = names
                    .iter()
                    .map(|n| {
                        current
                            .get(n)
                            .filter(|(p, _)| password.is_none_or(|want| p == want))
                            .map(|(_, t)| *t)
                    })
                    .collect();
                if let Some(times) = times {
                    return times.into_iter().max().unwrap_or_else(Instant::now);
                }
            }
            assert!(
                Instant::now() < until,
                "not every namespace got the secret within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `namespace` is seen without our Secret.
    async fn gone(&self, namespace: &str, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.current.lock().unwrap().contains_key(namespace) {
            assert!(
                Instant::now() < until,
                "the deletion of the Secret in {namespace} was not seen within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// How many changes were seen so far.
    fn changes(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// When the first change after the first `seen` changes was seen.
    fn first_change_after(&self, seen: usize) -> Option<Instant> {
        self.log.lock().unwrap().get(seen).copied()
    }

    fn password_in(&self, namespace: &str) -> Option<String> {
        self.current
            .lock()
            .unwrap()
            .get(namespace)
            .map(|(p, _)| p.clone())
    }
}

async fn create_namespaces(client: &Client, names: &[String]) {
    futures::stream::iter(names)
        .map(|name| create_namespace(client, name))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// The floor: `names.len()` server-side applies of a Secret the size of ours, at the
/// controller's concurrency, by a plain client loop.
async fn floor(client: &Client, names: &[String]) -> Duration {
    let config = json!({"auths": {"123456789012.dkr.ecr.us-east-1.amazonaws.com": {
        "auth": STANDARD.encode(format!("AWS:{}", "x".repeat(2200))),
    }}});
    let data = serde_json::to_vec(&config).unwrap();
    let started = Instant::now();
    futures::stream::iter(names.iter().cloned())
        .map(|ns| {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "bench-floor", "labels": {"app.kubernetes.io/managed-by": "bench"},
                             "annotations": {"ecr-pull-secrets.io/fingerprint": "0".repeat(64)}},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": STANDARD.encode(&data)},
            });
            async move {
                api.patch("bench-floor", &PatchParams::apply("bench-floor").force(), &Patch::Apply(&secret))
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await
        .expect("floor writes");
    started.elapsed()
}

/// apiserver_request_total summed by (verb, resource), from the API server's own metrics.
async fn api_requests(client: &Client) -> HashMap<(String, String), f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client
        .request_text(request)
        .await
        .expect("apiserver /metrics");
    let mut sums = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        *sums.entry((label("verb"), label("resource"))).or_default() +=
            value.parse::<f64>().unwrap_or(0.0);
    }
    sums
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates namespace `name` after a leader was killed at `killed`: the time from the kill
/// until the namespace holds our secret.
async fn served_after(client: &Client, seen: &Seen, name: &str, killed: Instant) -> Duration {
    create_namespace(client, name).await;
    let written = seen
        .all(&[name.to_string()], None, Duration::from_secs(60))
        .await;
    written.duration_since(killed)
}

/// Waits until the controller at `address` counts `count` namespaces synced.
async fn wait_all_synced(address: &str, count: usize, who: &str) {
    let synced = "ecr_pull_secrets_namespaces{state=\"synced\"}";
    let checked_by = Instant::now() + Duration::from_secs(900);
    while metric(&scrape(address).await, synced) < count as f64 {
        assert!(
            Instant::now() < checked_by,
            "{who} did not report every namespace synced in 900 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scrape(address: &str) -> String {
    http_get(address, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn main() {
    let args = Args::parse();
    support::reexec_in_testenv();
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(bench(args));
}

async fn bench(args: Args) {
    let n = args.namespaces;
    let env = support::testenv().expect("the test environment");
    let client = support::client().await;
    let controller_namespace = "ecr-pull-secrets-bench";
    create_namespaces(&client, &[controller_namespace.to_string()]).await;

    let names: Vec<String> = (0..n).map(|i| format!("{PREFIX}-{i:05}")).collect();
    let started = Instant::now();
    create_namespaces(&client, &names).await;
    eprintln!("scale: created {n} namespaces in {:.1?}", started.elapsed());

    let floor_time = floor(&client, &names).await;
    eprintln!("scale: floor {n} applies in {floor_time:.2?}");

    // The first token lives long enough for the cold start to finish well before its refresh.
    let first_ttl = (floor_time.as_secs_f64() * 6.0).max(60.0).ceil() as u64;
    env.set_emulator(&json!({ "ttl_seconds": first_ttl }));
    let seen = Seen::start(&client);
    let calls_before = env.call_log().len();
    let registries: Vec<String> = ["us-east-1", "eu-west-1", "ap-south-1"]
        [..usize::from(args.regions)]
        .iter()
        .map(|r| format!("123456789012.dkr.ecr.{r}.amazonaws.com"))
        .collect();
    let targets = format!("{PREFIX}-*");
    let mut common = vec![
        "--secret-name",
        SECRET,
        "--target-namespaces",
        &targets,
        "--namespace",
        controller_namespace,
        "--lease-name",
        "bench",
        "--admin-address",
        "127.0.0.1:0",
        "--write-qps",
        "10000",
        "--write-burst",
        "10000",
        "--concurrency",
        "16",
        "--refresh-fraction",
        "0.5",
    ];
    for registry in &registries {
        common.extend(["--registry", registry.as_str()]);
    }
    let regions = registries.len();
    let cold_started = Instant::now();
    let mut leader = env.controller_with_env("leader", &common, &[("POD_NAME", "leader")]);
    let done = seen.all(&names, None, Duration::from_secs(600)).await;
    let cold_start = done.duration_since(cold_started);
    eprintln!("scale: cold start {cold_start:.2?}");
    // A follower, for failover at the end (and as the no-cache baseline for memory).
    let mut follower = env.controller_with_env("follower", &common, &[("POD_NAME", "follower")]);
    // Later tokens live 12 h: after the rotation nothing changes.
    env.set_emulator(&json!({}));

    // New-namespace latency, one at a time.
    let mut latencies = Vec::new();
    for i in 0..args.samples {
        let name = format!("{PREFIX}-new-{i:04}");
        let created = Instant::now();
        create_namespace(&client, &name).await;
        let got = seen
            .all(std::slice::from_ref(&name), None, Duration::from_secs(30))
            .await;
        latencies.push(got.saturating_duration_since(created).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!("scale: new namespace p50 {p50:.1} ms, p99 {p99:.1} ms");
    let mut all_names = names.clone();
    all_names.extend((0..args.samples).map(|i| format!("{PREFIX}-new-{i:04}")));

    // Rotation: the refresh at about half the first token's lifetime.
    let old = seen.password_in(&names[0]).unwrap();
    let changes_before_rotation = seen.changes();
    let until = Instant::now() + Duration::from_secs(first_ttl + 60);
    let rotation_call = loop {
        let calls = env.call_log();
        if let Some(call) = calls[calls_before..]
            .iter()
            .skip(regions)
            .find(|c| c["outcome"] == "ok")
        {
            break call.clone();
        }
        assert!(Instant::now() < until, "no token refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fetched_at =
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(rotation_call["time"].as_f64().unwrap());
    // The new password: whatever the first namespace changes to.
    let new = loop {
        match seen.password_in(&names[0]) {
            Some(p) if p != old => break p,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let rotated = seen
        .all(&all_names, Some(&new), Duration::from_secs(600))
        .await;
    let rotation = (SystemTime::now() - rotated.elapsed())
        .duration_since(fetched_at)
        .unwrap_or_default();
    // Writes of the whole cycle: every region refreshed, and the writes settled (nothing
    // seen for 5 s).
    let until = Instant::now() + Duration::from_secs(first_ttl + 60);
    while env.call_log()[calls_before..]
        .iter()
        .filter(|c| c["outcome"] == "ok")
        .count()
        < 2 * regions
    {
        assert!(Instant::now() < until, "not every region refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut settled = seen.changes();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = seen.changes();
        if now == settled {
            break;
        }
        settled = now;
    }
    let writes_per_cycle = (settled - changes_before_rotation) as f64 / all_names.len() as f64;
    let aws_calls_per_refresh =
        (env.call_log().len() - calls_before - regions) as f64 / regions as f64;
    eprintln!(
        "scale: rotation {rotation:.2?}, AWS calls per refresh {aws_calls_per_refresh}, writes per namespace per cycle {writes_per_cycle:.2} ({regions} regions)"
    );

    // Steady state: nothing changes for a while.
    let address = leader.admin_address().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (scrape(&address).await, api_requests(&client).await);
    let window = Instant::now();
    tokio::time::sleep(args.steady).await;
    let after = (scrape(&address).await, api_requests(&client).await);
    let minutes = window.elapsed().as_secs_f64() / 60.0;
    let writes = metric(&after.0, "ecr_pull_secrets_writes_total")
        - metric(&before.0, "ecr_pull_secrets_writes_total");
    let delta = |f: &dyn Fn(&(String, String)) -> bool| -> f64 {
        after
            .1
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(k, v)| v - before.1.get(k).copied().unwrap_or(0.0))
            .sum::<f64>()
            / minutes
    };
    let ours: HashSet<&str> = ["secrets", "namespaces", "serviceaccounts"].into();
    let steady_writes = writes / minutes;
    let steady_lists =
        delta(&|(verb, resource)| verb == "LIST" && ours.contains(resource.as_str()));
    let steady_requests =
        delta(&|(verb, resource)| ours.contains(resource.as_str()) && verb != "WATCH");
    let lease_requests = delta(&|(_, resource)| resource == "leases");
    eprintln!("scale: steady {steady_writes:.1} writes/min, {steady_lists:.1} lists/min");

    let (lead, follow) = (leader.usage(), follower.usage());
    let (leader_hwm, leader_rss, cpu) = (lead.peak, lead.rss, lead.cpu_seconds);
    let follower_hwm = follow.peak;
    let peak_rss_mib = leader_hwm as f64 / 1024.0;
    let growth_kib = (leader_hwm as f64 - follower_hwm as f64) / all_names.len() as f64;

    // Failover: SIGKILL the leader, create a namespace; time until the new leader's first write
    // (writes resume), and until it has served the new namespace.
    let writes_seen = seen.changes();
    let calls_before_kill = env.call_log().len();
    leader.kill();
    let killed = Instant::now();
    let name = format!("{PREFIX}-failover");
    let served = served_after(&client, &seen, &name, killed).await;
    let failover = seen
        .first_change_after(writes_seen)
        .map_or(served, |t| t.duration_since(killed));
    all_names.push(name);
    // The takeover's cost, once the new leader has checked every namespace: AWS calls and
    // writes besides the new namespace (a leader that adopts the written token makes none).
    wait_all_synced(
        &follower.admin_address().await,
        all_names.len(),
        "the new leader",
    )
    .await;
    let takeover_writes = seen.changes() - writes_seen - 1;
    let takeover_aws_calls = env.call_log().len() - calls_before_kill;
    eprintln!(
        "scale: takeover: {takeover_writes} rewrites, {takeover_aws_calls} AWS calls, new namespace in {served:.2?}"
    );

    // A single replica restarted: SIGKILL the only leader and start a new process at once (as
    // a Deployment of one would); it takes the lease when the dead one's expires.
    let writes_seen = seen.changes();
    let calls_before_restart = env.call_log().len();
    follower.kill();
    let killed = Instant::now();
    let restarted = env.controller_with_env("restarted", &common, &[("POD_NAME", "restarted")]);
    let name = format!("{PREFIX}-restart");
    let restart_served = served_after(&client, &seen, &name, killed).await;
    all_names.push(name);
    let restarted_address = restarted.admin_address().await;
    wait_all_synced(&restarted_address, all_names.len(), "the restarted replica").await;
    let restart_writes = seen.changes() - writes_seen - 1;
    let restart_aws_calls = env.call_log().len() - calls_before_restart;
    eprintln!(
        "scale: single replica restart: {restart_writes} rewrites, {restart_aws_calls} AWS calls, new namespace in {restart_served:.2?}"
    );
    drop(restarted);
    drop(follower);

    // New namespaces during a rotation at the shipped write limits (20 writes/s): a controller
    // with the defaults that must refresh at once (--max-refresh-interval 1m, the token is
    // older) rewrites every namespace at 20/s while namespaces are created one at a time.
    let mut defaults = vec![
        "--secret-name",
        SECRET,
        "--target-namespaces",
        &targets,
        "--namespace",
        controller_namespace,
        "--lease-name",
        "bench-defaults",
        "--admin-address",
        "127.0.0.1:0",
        "--max-refresh-interval",
        "1m",
    ];
    for registry in &registries {
        defaults.extend(["--registry", registry.as_str()]);
    }
    let calls_before_defaults = env.call_log().len();
    let changes_before_defaults = seen.changes();
    let rotating = env.controller_with_env("defaults", &defaults, &[("POD_NAME", "defaults")]);
    let until = Instant::now() + Duration::from_secs(180);
    while env.call_log().len() == calls_before_defaults
        || seen.changes() < changes_before_defaults + 20
    {
        assert!(
            Instant::now() < until,
            "the controller with default limits did not start rotating in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut during = Vec::new();
    for i in 0..args.samples.min(100) {
        let name = format!("{PREFIX}-rot-{i:04}");
        let created = Instant::now();
        create_namespace(&client, &name).await;
        let got = seen
            .all(std::slice::from_ref(&name), None, Duration::from_secs(600))
            .await;
        during.push(got.saturating_duration_since(created).as_secs_f64() * 1000.0);
        all_names.push(name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then Secrets deleted during the same rotation: the time until each is back.
    let mut repairs = Vec::new();
    for i in 0..args.samples.min(100).min(n) {
        let name = format!("{PREFIX}-{:05}", n - 1 - i);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &name);
        let deleted = Instant::now();
        secrets
            .delete(SECRET, &Default::default())
            .await
            .expect("delete a pull secret");
        seen.gone(&name, Duration::from_secs(60)).await;
        let got = seen
            .all(std::slice::from_ref(&name), None, Duration::from_secs(600))
            .await;
        repairs.push(got.saturating_duration_since(deleted).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each repair is a change too.
    let still_rotating = seen.changes() - changes_before_defaults < all_names.len() + repairs.len();
    drop(rotating);
    repairs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (repair_p50, repair_p99) = (percentile(&repairs, 0.5), percentile(&repairs, 0.99));
    during.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (rot_p50, rot_p99) = (percentile(&during, 0.5), percentile(&during, 0.99));
    eprintln!(
        "scale: new namespace during a rotation at 20 writes/s: p50 {rot_p50:.1} ms, p99 {rot_p99:.1} ms ({} samples{})",
        during.len(),
        if still_rotating {
            ", all taken while the rotation ran"
        } else {
            "; the rotation finished before the last sample"
        }
    );
    eprintln!(
        "scale: deleted Secret restored during the same rotation: p50 {repair_p50:.1} ms, p99 {repair_p99:.1} ms ({} samples)",
        repairs.len()
    );

    let resources = if args.resources > 0 {
        Some(
            serve_resources(
                &env,
                &client,
                args.resources,
                all_names.len(),
                controller_namespace,
            )
            .await,
        )
    } else {
        None
    };

    let mut report = json!({
        "namespaces": n,
        "cold_start_seconds": cold_start.as_secs_f64(),
        "floor_seconds": floor_time.as_secs_f64(),
        "cold_start_ratio": cold_start.as_secs_f64() / floor_time.as_secs_f64(),
        "new_namespace_p50_ms": p50,
        "new_namespace_p99_ms": p99,
        "rotation_seconds": rotation.as_secs_f64(),
        "rotation_ratio": rotation.as_secs_f64() / (floor_time.as_secs_f64() * all_names.len() as f64 / n as f64),
        "steady_writes_per_minute": steady_writes,
        "steady_lists_per_minute": steady_lists,
        "steady_api_requests_per_minute": steady_requests,
        "steady_lease_requests_per_minute": lease_requests,
        "peak_rss_mib": peak_rss_mib,
        "steady_rss_mib": leader_rss as f64 / 1024.0,
        "baseline_rss_mib": follower_hwm as f64 / 1024.0,
        "leader_rss_anon_mib": lead.anon as f64 / 1024.0,
        "leader_rss_file_mib": lead.file as f64 / 1024.0,
        "follower_rss_anon_mib": follow.anon as f64 / 1024.0,
        "follower_rss_file_mib": follow.file as f64 / 1024.0,
        "rss_growth_kib_per_namespace": growth_kib,
        "cpu_seconds": cpu,
        "aws_calls_per_refresh": aws_calls_per_refresh,
        "regions": regions,
        "writes_per_cycle": writes_per_cycle,
        "failover_seconds": failover.as_secs_f64(),
        "failover_new_namespace_seconds": served.as_secs_f64(),
        "takeover_writes": takeover_writes,
        "takeover_aws_calls": takeover_aws_calls,
        "takeover_new_namespace_ms": served.as_secs_f64() * 1000.0,
        "restart_writes": restart_writes,
        "restart_aws_calls": restart_aws_calls,
        "restart_new_namespace_ms": restart_served.as_secs_f64() * 1000.0,
        "new_namespace_p50_during_rotation_ms": rot_p50,
        "new_namespace_p99_during_rotation_ms": rot_p99,
        "repair_p50_during_rotation_ms": repair_p50,
        "repair_p99_during_rotation_ms": repair_p99,
        "rotation_outlasted_samples": still_rotating,
    });
    let mut rows = vec![
        ("namespaces", format!("{n}"), ""),
        (
            "floor (plain client, SSA x N)",
            format!("{:.2} s", floor_time.as_secs_f64()),
            "",
        ),
        (
            "cold start to all valid",
            format!("{:.2} s", cold_start.as_secs_f64()),
            "",
        ),
        (
            "cold start / floor",
            format!("{:.2}", report["cold_start_ratio"].as_f64().unwrap()),
            "<= 1.3",
        ),
        ("new namespace p50", format!("{p50:.1} ms"), "<= 30 ms"),
        ("new namespace p99", format!("{p99:.1} ms"), "<= 100 ms"),
        (
            "rotation to all",
            format!("{:.2} s", rotation.as_secs_f64()),
            "",
        ),
        (
            "rotation / floor",
            format!("{:.2}", report["rotation_ratio"].as_f64().unwrap()),
            "<= 1.3",
        ),
        ("steady writes / min", format!("{steady_writes:.1}"), "0"),
        ("steady lists / min", format!("{steady_lists:.1}"), "0"),
        (
            "steady requests / min (secrets, namespaces)",
            format!("{steady_requests:.1}"),
            "",
        ),
        (
            "lease requests / min (all clients)",
            format!("{lease_requests:.1}"),
            "",
        ),
        (
            "peak RSS",
            format!("{peak_rss_mib:.1} MiB"),
            "<= 40 MiB at 10,000",
        ),
        (
            "RSS in the steady state",
            format!("{:.1} MiB", leader_rss as f64 / 1024.0),
            "",
        ),
        (
            "RSS growth per namespace",
            format!("{growth_kib:.2} KiB"),
            "",
        ),
        ("CPU", format!("{cpu:.2} s"), ""),
        (
            "AWS calls per refresh and region",
            format!("{aws_calls_per_refresh}"),
            "1",
        ),
        (
            "writes per namespace per refresh cycle",
            format!("{writes_per_cycle:.2} ({regions} regions)"),
            "1",
        ),
        (
            "failover: writes resume after SIGKILL",
            format!("{:.2} s", failover.as_secs_f64()),
            "",
        ),
        (
            "failover: new namespace served",
            format!("{:.2} s", served.as_secs_f64()),
            "<= lease + 2 s (17 s)",
        ),
        (
            "new namespace p50 / p99 during a rotation at 20 writes/s",
            format!("{rot_p50:.1} / {rot_p99:.1} ms"),
            "p99 <= 100 ms",
        ),
        (
            "deleted Secret restored, p50 / p99, during the same rotation",
            format!("{repair_p50:.1} / {repair_p99:.1} ms"),
            "",
        ),
        ("takeover: rewrites", format!("{takeover_writes}"), "0"),
        ("takeover: AWS calls", format!("{takeover_aws_calls}"), "0"),
        (
            "single replica restarted: rewrites / AWS calls",
            format!("{restart_writes} / {restart_aws_calls}"),
            "0 / 0",
        ),
        (
            "single replica restarted: new namespace served",
            format!("{:.2} s", restart_served.as_secs_f64()),
            "<= lease + 2 s (17 s)",
        ),
    ];
    if let Some(r) = &resources {
        report["resources"] = json!(r.count);
        report["resources_cold_start_seconds"] = json!(r.cold_start.as_secs_f64());
        report["resources_peak_rss_mib"] = json!(r.peak_rss_mib);
        report["resources_rss_mib_per_resource"] =
            json!((r.peak_rss_mib - follower_hwm as f64 / 1024.0) / r.count as f64);
        report["resources_rss_mib"] = json!(r.usage.rss as f64 / 1024.0);
        report["resources_rss_anon_mib"] = json!(r.usage.anon as f64 / 1024.0);
        report["resources_rss_file_mib"] = json!(r.usage.file as f64 / 1024.0);
        report["resources_cpu_seconds"] = json!(r.usage.cpu_seconds);
        rows.push((
            "EcrPullSecret resources (each every namespace)",
            format!("{}", r.count),
            "",
        ));
        rows.push((
            "resources: cold start to all synced",
            format!("{:.2} s", r.cold_start.as_secs_f64()),
            "",
        ));
        rows.push((
            "resources: peak RSS",
            format!("{:.1} MiB", r.peak_rss_mib),
            "",
        ));
        rows.push((
            "resources: (peak - follower peak) / resources",
            format!(
                "{:.2} MiB",
                report["resources_rss_mib_per_resource"].as_f64().unwrap()
            ),
            "",
        ));
        rows.push((
            "resources: CPU to all synced",
            format!("{:.2} s", r.usage.cpu_seconds),
            "",
        ));
    }
    println!("\n{:<46} {:>14}  target", "measure", "value");
    for (name, value, target) in rows {
        println!("{name:<46} {value:>14}  {target}");
    }
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("\n{text}");
    if let Some(path) = args.json {
        std::fs::write(&path, text + "\n").expect("write the JSON report");
        eprintln!("scale: report written to {}", path.display());
    }
}

struct ResourcesRun {
    count: usize,
    cold_start: Duration,
    peak_rss_mib: f64,
    usage: support::Usage,
}

/// `count` EcrPullSecrets, each selecting every bench namespace (`expected` of them) under its
/// own secret name, served by a fresh controller: time until every status counts `expected`
/// synced, and that controller's peak RSS.
async fn serve_resources(
    env: &TestEnv,
    client: &Client,
    count: usize,
    expected: usize,
    controller_namespace: &str,
) -> ResourcesRun {
    use ecr_pull_secrets::core::crd::EcrPullSecret;
    install_crd();
    let api: Api<EcrPullSecret> = Api::all(client.clone());
    let names: Vec<String> = (0..count).map(|k| format!("bench-r{k}")).collect();
    for name in &names {
        let spec = json!({
            "secretName": name,
            "registries": [{"host": "123456789012.dkr.ecr.us-east-1.amazonaws.com"}],
            "namespaces": {"include": [format!("{PREFIX}-*")]},
            "writes": {"qps": 10000, "burst": 10000},
        });
        api.create(&PostParams::default(), &ecr_pull_secret(name, spec))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let controller = env.controller_with_env(
        "resources",
        &[
            "--resources",
            "--namespace",
            controller_namespace,
            "--lease-name",
            "bench-resources",
            "--admin-address",
            "127.0.0.1:0",
        ],
        &[("AWS_REGION", ""), ("POD_NAME", "resources")],
    );
    loop {
        let list = api.list(&Default::default()).await.unwrap();
        let synced = list
            .items
            .iter()
            .filter(|r| {
                r.status
                    .as_ref()
                    .and_then(|s| s.namespaces.as_ref())
                    .is_some_and(|n| n.synced as usize == expected)
            })
            .count();
        if synced == count {
            break;
        }
        // 20 resources over 10,000 namespaces are 200,000 writes.
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "resources not synced within an hour"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cold_start = started.elapsed();
    let usage = controller.usage();
    let peak_rss_mib = usage.peak as f64 / 1024.0;
    eprintln!(
        "scale: {count} resources synced in {cold_start:.2?}, peak RSS {peak_rss_mib:.1} MiB"
    );
    ResourcesRun {
        count,
        cold_start,
        peak_rss_mib,
        usage,
    }
}

//! End to end: high availability with three controller processes against the testenv: one
//! leader, failover on SIGKILL, handover on SIGTERM, fencing when the leader is cut off, probes.
//! Run through `tests/testenv.sh run -- cargo test --test e2e_ha -- --test-threads=1`.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A replica: the process and its admin address (read from its log).
struct Replica {
    identity: String,
    process: support::Controller,
    admin: String,
}

impl Replica {
    async fn start(env: &TestEnv, identity: &str, args: &[&str], vars: &[(&str, &str)]) -> Replica {
        let mut all = vec!["--identity", identity];
        all.extend_from_slice(args);
        let process = env.controller_with_env(identity, &all, vars);
        let admin = process.admin_address().await;
        Replica {
            identity: identity.to_string(),
            process,
            admin,
        }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&self.admin, "/metrics").await?;
        let line = body
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    async fn writes(&self) -> f64 {
        let (_, body) = http_get(&self.admin, "/metrics").await.unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with("ecr_pull_secrets_writes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn wrote_after(&self, at: SystemTime) -> bool {
        self.process
            .log_text()
            .lines()
            .filter(|l| l.contains("wrote pull secret"))
            .any(|l| {
                let stamp = l.split_whitespace().next().unwrap_or_default();
                let t = humantime::parse_rfc3339_weak(stamp)
                    .unwrap_or_else(|e| panic!("timestamp {stamp:?}: {e}"));
                t > at
            })
    }
}

async fn holder(client: &Client, lease: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    api.get_opt(lease)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn start_replicas(
    env: &TestEnv,
    p: &str,
    secret: &str,
    lease: &str,
    n: usize,
) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for i in 0..n {
        let identity = format!("{p}-r{i}");
        replicas.push(
            Replica::start(
                env,
                &identity,
                &[
                    "--secret-name",
                    secret,
                    "--target-namespaces",
                    &format!("{p}-*"),
                    "--lease-name",
                    lease,
                ],
                &[],
            )
            .await,
        );
    }
    replicas
}

#[tokio::test]
async fn one_leader_idle_followers_and_probes() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("ha");
    let namespaces: Vec<String> = (0..5).map(|i| format!("{p}-{i}")).collect();
    for ns in &namespaces {
        create_namespace(&client, ns).await;
    }
    let secret = format!("pull-{p}");
    let lease = format!("lease-{p}");
    let replicas = start_replicas(&env, &p, &secret, &lease, 3).await;
    for ns in &namespaces {
        eventually(
            "every namespace synced",
            Duration::from_secs(30),
            || async { get_secret(&client, ns, &secret).await },
        )
        .await;
    }
    let mut leaders = Vec::new();
    for r in &replicas {
        assert_eq!(
            http_get(&r.admin, "/readyz").await.map(|r| r.0),
            Some(200),
            "{} ready",
            r.identity
        );
        assert_eq!(http_get(&r.admin, "/healthz").await.map(|r| r.0), Some(200));
        if r.metric("ecr_pull_secrets_leader").await == Some(1.0) {
            leaders.push(r.identity.clone());
        }
    }
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    assert_eq!(
        holder(&client, &lease).await.as_deref(),
        Some(leaders[0].as_str())
    );
    for r in &replicas {
        let writes = r.writes().await;
        if r.identity == leaders[0] {
            assert_eq!(
                writes,
                5.0,
                "the leader wrote each namespace once: {:?}",
                http_get(&r.admin, "/metrics").await
            );
        } else {
            assert_eq!(writes, 0.0, "follower {} wrote nothing", r.identity);
        }
    }
    delete_namespaces(&client, &namespaces).await;
}

/// Three replicas serving one namespace: (prefix, secret, lease, the leader, the followers).
async fn led_cluster(
    env: &TestEnv,
    client: &Client,
    prefix: &str,
) -> (String, String, String, Replica, Vec<Replica>) {
    let p = unique(prefix);
    create_namespace(client, &format!("{p}-0")).await;
    let secret = format!("pull-{p}");
    let lease = format!("lease-{p}");
    let mut replicas = start_replicas(env, &p, &secret, &lease, 3).await;
    eventually("synced", Duration::from_secs(30), || async {
        get_secret(client, &format!("{p}-0"), &secret).await
    })
    .await;
    let leader = holder(client, &lease).await.unwrap();
    let index = replicas.iter().position(|r| r.identity == leader).unwrap();
    let leader = replicas.remove(index);
    (p, secret, lease, leader, replicas)
}

/// Failover after SIGKILL: seconds until a new leader has written a namespace created right
/// after the kill.
async fn sigkill_failover(env: &TestEnv, client: &Client) -> f64 {
    let (p, secret, lease, killed, _followers) = led_cluster(env, client, "kill").await;
    let leader = killed.identity.clone();
    drop(killed); // SIGKILL
    let started = Instant::now();
    let late = format!("{p}-late");
    create_namespace(client, &late).await;
    eventually("a new leader writing", Duration::from_secs(17), || async {
        get_secret(client, &late, &secret).await
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let new_leader = holder(client, &lease).await.unwrap();
    assert_ne!(new_leader, leader);
    delete_namespaces(client, &[format!("{p}-0"), late]).await;
    seconds
}

/// Handover after SIGTERM: seconds until another replica holds the lease; the old leader exits 0.
async fn sigterm_handover(env: &TestEnv, client: &Client) -> f64 {
    let (p, secret, lease, mut old, _followers) = led_cluster(env, client, "term").await;
    let leader = old.identity.clone();
    let started = Instant::now();
    let exit = tokio::task::spawn_blocking(move || old.process.terminate(Duration::from_secs(10)));
    eventually(
        "another replica holding the lease",
        Duration::from_secs(2),
        || async { holder(client, &lease).await.filter(|h| *h != leader) },
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(exit.await.unwrap(), Some(0), "the old leader exits 0");
    // The new leader works: a new namespace gets the secret.
    let late = format!("{p}-late");
    create_namespace(client, &late).await;
    eventually("the new leader writing", Duration::from_secs(5), || async {
        get_secret(client, &late, &secret).await
    })
    .await;
    delete_namespaces(client, &[format!("{p}-0"), late]).await;
    seconds
}

#[tokio::test]
async fn sigkill_failover_within_lease_duration_plus_two_seconds() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let seconds = sigkill_failover(&env, &client).await;
    eprintln!("SIGKILL failover: {seconds:.2}s");
}

#[tokio::test]
async fn sigterm_hands_over_within_two_seconds_and_exits_zero() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let seconds = sigterm_handover(&env, &client).await;
    eprintln!("SIGTERM handover: {seconds:.2}s");
}

/// The figures for the closing note: `cargo test --test e2e_ha -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "slow: ten failovers of each kind (about 4 minutes)"]
async fn failover_times_over_ten_runs() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let summary = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!(
            "median {:.2}s, max {:.2}s, all {v:.2?}",
            v[v.len() / 2],
            v[v.len() - 1]
        )
    };
    let mut kills = Vec::new();
    let mut terms = Vec::new();
    for _ in 0..10 {
        kills.push(sigkill_failover(&env, &client).await);
        terms.push(sigterm_handover(&env, &client).await);
    }
    eprintln!("SIGKILL failover over 10 runs: {}", summary(kills));
    eprintln!("SIGTERM handover over 10 runs: {}", summary(terms));
}

/// A TCP proxy to the API server that the test can cut: closing drops every connection and
/// refuses new ones.
struct Proxy {
    address: String,
    cut: Arc<Notify>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(Notify::new());
        let stop = cut.clone();
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (mut inbound, _) = match accepted {
                            Ok(connection) => connection,
                            Err(e) => {
                                eprintln!("proxy: accept failed: {e}");
                                continue;
                            }
                        };
                        let upstream = upstream.clone();
                        connections.spawn(async move {
                            match TcpStream::connect(&upstream).await {
                                Ok(mut outbound) => {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                                Err(e) => eprintln!("proxy: upstream {upstream}: {e}"),
                            }
                        });
                    }
                    _ = stop.notified() => break,
                }
            }
            eprintln!("proxy: cut");
            connections.abort_all();
        });
        Proxy { address, cut }
    }

    fn cut(&self) {
        self.cut.notify_one();
    }
}

/// The admin kubeconfig pointed at `address` instead of the API server.
fn kubeconfig_via(address: &str, dir: &std::path::Path) -> (PathBuf, String) {
    let original = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let server_line = original
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .unwrap();
    let upstream = server_line
        .trim()
        .trim_start_matches("server:")
        .trim()
        .trim_start_matches("https://")
        .to_string();
    let rewritten = original.replace(&upstream, address);
    let path = dir.join(format!("via-{}.kubeconfig", address.replace(':', "-")));
    std::fs::write(&path, rewritten).unwrap();
    (path, upstream)
}

// Multi-threaded: the proxy must keep forwarding while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_writing_exits_and_another_leads() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("cut");
    create_namespace(&client, &format!("{p}-0")).await;
    let secret = format!("pull-{p}");
    let lease = format!("lease-{p}");
    let (_, upstream) = kubeconfig_via("127.0.0.1:1", &env.dir);
    // One proxy per cut-off replica.
    let proxy = Proxy::start(upstream.clone()).await;
    let (via_proxy, _) = kubeconfig_via(&proxy.address, &env.dir);
    let via_proxy = via_proxy.to_str().unwrap().to_string();
    let isolating_proxy = Proxy::start(upstream).await;
    let (via_isolating, _) = kubeconfig_via(&isolating_proxy.address, &env.dir);
    let via_isolating = via_isolating.to_str().unwrap().to_string();
    let common = [
        "--secret-name",
        &secret,
        "--target-namespaces",
        &format!("{p}-*"),
        "--lease-name",
        &lease,
    ];

    // The first replica leads, through the proxy.
    let mut cut_off = Replica::start(
        &env,
        &format!("{p}-a"),
        &common,
        &[("KUBECONFIG", &via_proxy)],
    )
    .await;
    eventually(
        "the proxied replica leading",
        Duration::from_secs(30),
        || async {
            holder(&client, &lease)
                .await
                .filter(|h| *h == cut_off.identity)
        },
    )
    .await;
    eventually("synced", Duration::from_secs(30), || async {
        get_secret(&client, &format!("{p}-0"), &secret).await
    })
    .await;
    // A follower also cut off from the API server, and with AWS unreachable: still live.
    // Its start-up through the proxy occasionally fails to connect on this machine (seen
    // 2 in ~10 runs, not understood yet); the start is set-up here, not the property under
    // test, so it is retried. The property, liveness while cut off, is asserted below.
    let mut isolated = None;
    for attempt in 0..3 {
        let mut replica = Replica::start(
            &env,
            &format!("{p}-iso{attempt}"),
            &common,
            &[
                ("KUBECONFIG", &via_isolating),
                ("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:1"),
            ],
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let started = loop {
            if replica
                .process
                .log_text()
                .contains("contending for leadership")
            {
                break true;
            }
            if replica.process.wait_exit(Duration::ZERO).is_some() {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "the isolated replica neither started nor exited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if started {
            isolated = Some(replica);
            break;
        }
        eprintln!(
            "isolated replica failed to start (attempt {attempt}):\n{}",
            replica.process.log_text()
        );
    }
    let isolated = isolated.expect("the isolated replica started within 3 attempts");
    let others = [
        Replica::start(&env, &format!("{p}-b"), &common, &[]).await,
        Replica::start(&env, &format!("{p}-c"), &common, &[]).await,
    ];

    proxy.cut();
    isolating_proxy.cut();
    let cut_at = SystemTime::now();
    let started = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = cut_off.process.wait_exit(Duration::from_secs(20));
        (code, cut_off)
    });
    // While cut off, the isolated follower stays live.
    for _ in 0..5 {
        assert_eq!(
            http_get(&isolated.admin, "/healthz").await.map(|r| r.0),
            Some(200)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (code, cut_off) = code.await.unwrap();
    eprintln!(
        "cut-off leader exited with {code:?} after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(code, Some(c) if c != 0),
        "involuntary loss exits non-zero: {code:?}"
    );
    assert!(cut_off.process.log_text().contains("stepping down"));
    assert!(
        !cut_off.wrote_after(cut_at + Duration::from_secs(10)),
        "no write after the renew deadline"
    );
    let new_leader = eventually(
        "another replica leading",
        Duration::from_secs(20),
        || async {
            holder(&client, &lease)
                .await
                .filter(|h| others.iter().any(|o| o.identity == *h))
        },
    )
    .await;
    eprintln!("{new_leader} leads {:?} after the cut", started.elapsed());
    assert_eq!(
        http_get(&isolated.admin, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    delete_namespaces(&client, &[format!("{p}-0")]).await;
}

#[tokio::test]
async fn readyz_fails_after_sigterm() {
    let Some(env) = testenv() else { return };
    let p = unique("ready");
    let mut replica = Replica::start(
        &env,
        &format!("{p}-r"),
        &[
            "--secret-name",
            &format!("pull-{p}"),
            "--target-namespaces",
            &format!("{p}-*"),
            "--shutdown-delay",
            "3s",
        ],
        &[],
    )
    .await;
    eventually("ready", Duration::from_secs(20), || async {
        (http_get(&replica.admin, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let pid_admin = replica.admin.clone();
    let exit = tokio::task::spawn_blocking(move || {
        let code = replica.process.terminate(Duration::from_secs(15));
        (code, replica)
    });
    eventually("503 after SIGTERM", Duration::from_secs(3), || async {
        (http_get(&pid_admin, "/readyz").await?.0 == 503).then_some(())
    })
    .await;
    assert_eq!(
        http_get(&pid_admin, "/healthz").await.map(|r| r.0),
        Some(200),
        "still live while draining"
    );
    let (code, replica) = exit.await.unwrap();
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        replica.process.log_text()
    );
}

/// A new leader adopts the still-valid token the previous one wrote instead of fetching its own
/// and rewriting every namespace: after a SIGKILL failover and after a restart of a single
/// replica (while AWS fails), it makes no AWS call and writes only the namespace created
/// meanwhile, which it serves within the lease duration + 2 s.
#[tokio::test]
async fn a_takeover_adopts_the_written_token_without_aws_calls_or_rewrites() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("adopt");
    let names: Vec<String> = (0..20).map(|i| format!("{p}-{i}")).collect();
    for ns in &names {
        create_namespace(&client, ns).await;
    }
    let secret = format!("pull-{p}");
    let lease = format!("lease-{p}");
    let targets = format!("{p}-*");
    let args = [
        "--secret-name",
        secret.as_str(),
        "--target-namespaces",
        &targets,
        "--lease-name",
        &lease,
    ];
    let recorder = Recorder::start(&client, &secret);
    let first = Replica::start(&env, &format!("{p}-a"), &args, &[]).await;
    let token = eventually(
        "every namespace written and recorded",
        Duration::from_secs(30),
        || async {
            let seen = recorder.snapshot();
            let tokens: std::collections::BTreeSet<String> = names
                .iter()
                .map(|ns| {
                    seen.iter()
                        .rfind(|o| o.namespace == *ns)
                        .map(|o| o.secret.password.clone())
                })
                .collect::<Option<_>>()?;
            (tokens.len() == 1).then(|| tokens.into_iter().next().unwrap())
        },
    )
    .await;
    let second = Replica::start(&env, &format!("{p}-b"), &args, &[]).await;

    // Failover: SIGKILL, then a namespace the new leader must serve.
    let taken = |replica: &Replica, at: SystemTime, late: &str| {
        let rewritten: Vec<String> = recorder
            .snapshot()
            .into_iter()
            .filter(|o| o.at > at && o.namespace != late)
            .map(|o| o.namespace)
            .collect();
        assert!(
            rewritten.is_empty(),
            "{} rewrote {rewritten:?} at takeover; log:\n{}",
            replica.identity,
            replica.process.log_text()
        );
    };
    drop(first);
    let killed = SystemTime::now();
    let started = Instant::now();
    let late = format!("{p}-late");
    create_namespace(&client, &late).await;
    let served = eventually(
        "the new leader serving the namespace created after the kill (lease + 2 s)",
        Duration::from_secs(17),
        || async { get_secret(&client, &late, &secret).await },
    )
    .await;
    eprintln!(
        "figure: SIGKILL takeover served a new namespace in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(decode(&served).password, token, "the adopted token");
    let calls = "ecr_pull_secrets_aws_get_authorization_token_calls_total";
    let adopted = "ecr_pull_secrets_tokens_adopted_total";
    assert_eq!(second.metric(calls).await.unwrap_or(0.0), 0.0, "AWS calls");
    assert_eq!(second.metric(adopted).await, Some(1.0), "tokens adopted");
    taken(&second, killed, &late);

    // A restart of a single replica, during an AWS outage: SIGTERM hands the lease back, a new
    // process takes it and serves a new namespace with the adopted token.
    let mut second = second;
    assert_eq!(second.process.terminate(Duration::from_secs(10)), Some(0));
    struct Recover<'a>(&'a TestEnv);
    impl Drop for Recover<'_> {
        fn drop(&mut self) {
            self.0.set_emulator(&serde_json::json!({}));
        }
    }
    env.set_emulator(&serde_json::json!({ "fail": "5xx" }));
    let _recover = Recover(&env);
    let restarted = SystemTime::now();
    let third = Replica::start(&env, &format!("{p}-c"), &args, &[]).await;
    let again = format!("{p}-again");
    create_namespace(&client, &again).await;
    let served = eventually(
        "the restarted replica serving a new namespace",
        Duration::from_secs(17),
        || async { get_secret(&client, &again, &secret).await },
    )
    .await;
    assert_eq!(decode(&served).password, token, "the adopted token");
    assert_eq!(third.metric(calls).await.unwrap_or(0.0), 0.0, "AWS calls");
    assert_eq!(third.metric(adopted).await, Some(1.0), "tokens adopted");
    taken(&third, restarted, &again);
    drop(third);
    let mut all = names;
    all.extend([late, again]);
    delete_namespaces(&client, &all).await;
}

/// A leader paused (SIGSTOP) past its lease in the middle of writing (new namespaces queued
/// behind a slow write limiter), resumed after another replica took over and wrote every
/// namespace: the writes it had queued must not go out with its older token. The fence checked
/// immediately before every write stops them: zero versions with the old token after the
/// takeover.
#[tokio::test]
async fn a_leader_paused_past_its_lease_writes_nothing_on_resume() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    let p = unique("pause");
    let first: Vec<String> = (0..3).map(|i| format!("{p}-{i}")).collect();
    for ns in &first {
        create_namespace(&client, ns).await;
    }
    let secret = format!("pull-{p}");
    let lease = format!("lease-{p}");
    let targets = format!("{p}-*");
    let common = [
        "--secret-name",
        secret.as_str(),
        "--target-namespaces",
        &targets,
        "--lease-name",
        &lease,
    ];
    let recorder = Recorder::start(&client, &secret);
    // One write a second after a burst of ten: new namespaces queue up behind the limiter,
    // and on resume up to ten queued writes may go at once.
    let mut slow = common.to_vec();
    slow.extend(["--write-qps", "1", "--write-burst", "10"]);
    let paused = Replica::start(&env, &format!("{p}-a"), &slow, &[]).await;
    eventually("the first leader", Duration::from_secs(30), || async {
        holder(&client, &lease)
            .await
            .filter(|h| *h == paused.identity)
    })
    .await;
    let old_tokens = eventually(
        "the first namespaces holding the first leader's token",
        Duration::from_secs(30),
        || async {
            let mut tokens = std::collections::BTreeSet::new();
            for ns in &first {
                tokens.insert(decode(&get_secret(&client, ns, &secret).await?).password);
            }
            Some(tokens)
        },
    )
    .await;
    // The follower fetches with another role: a follower with the same identity adopts the
    // written token (`a_takeover_adopts_the_written_token...`), and stale writes of the same
    // token could not be told from its own.
    let mut other_identity = common.to_vec();
    other_identity.extend(["--role-arn", "arn:aws:iam::123456789012:role/ecr-puller"]);
    let follower = Replica::start(&env, &format!("{p}-b"), &other_identity, &[]).await;
    let late: Vec<String> = (0..30).map(|i| format!("{p}-late-{i}")).collect();
    for ns in &late {
        create_namespace(&client, ns).await;
    }
    // Paused while writing: the burst spent, the rest queued.
    eventually(
        "the first leader writing the late namespaces",
        Duration::from_secs(30),
        || async {
            let mut written = 0;
            for ns in &late {
                written += usize::from(get_secret(&client, ns, &secret).await.is_some());
            }
            (written >= 10).then_some(())
        },
    )
    .await;
    paused.process.signal("STOP");
    eventually(
        "the follower taking over (after the 15 s lease)",
        Duration::from_secs(40),
        || async {
            holder(&client, &lease)
                .await
                .filter(|h| *h == follower.identity)
        },
    )
    .await;
    let namespaces: Vec<String> = first.iter().chain(&late).cloned().collect();
    eventually(
        "every namespace holding the new leader's token",
        Duration::from_secs(30),
        || async {
            for ns in &namespaces {
                let now = decode(&get_secret(&client, ns, &secret).await?).password;
                if old_tokens.contains(&now) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let taken_over = SystemTime::now();
    paused.process.signal("CONT");
    // On resume it finds the lease taken, steps down and exits non-zero.
    let mut paused = paused;
    let (code, paused) = tokio::task::spawn_blocking(move || {
        let code = paused.process.wait_exit(Duration::from_secs(30));
        (code, paused)
    })
    .await
    .unwrap();
    assert!(
        matches!(code, Some(c) if c != 0),
        "the resumed leader exits non-zero: {code:?}"
    );
    // Anything it sent on resume has been recorded by the time the new leader answers a
    // fresh trigger: a namespace created now is written by the new leader.
    let probe = format!("{p}-probe");
    create_namespace(&client, &probe).await;
    eventually(
        "the new leader still writing",
        Duration::from_secs(10),
        || async { get_secret(&client, &probe, &secret).await },
    )
    .await;
    let stale: Vec<String> = recorder
        .snapshot()
        .into_iter()
        .filter(|o| o.at > taken_over && old_tokens.contains(&o.secret.password))
        .map(|o| o.namespace)
        .collect();
    assert!(
        stale.is_empty(),
        "{} writes with the old leader's token after the takeover: {stale:?}",
        stale.len()
    );
    for ns in &namespaces {
        let now = decode(&get_secret(&client, ns, &secret).await.unwrap()).password;
        assert!(!old_tokens.contains(&now), "{ns} holds the old token");
    }
    drop((paused, follower));
    let mut all = namespaces;
    all.push(probe);
    delete_namespaces(&client, &all).await;
}

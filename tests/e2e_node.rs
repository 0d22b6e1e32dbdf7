//! End to end on a real node, as users run the product: the container image built from the
//! repository's Dockerfile, started by a kubelet from the shipped manifests (in-cluster config,
//! projected ServiceAccount token, downward API, probes, securityContext, PDB), and a kubelet
//! pulling a private image from the ECR registry emulator with the Secret the controller wrote.
//! Run through `tests/testenv.sh run --node -- cargo test --test e2e_node -- --test-threads=1`
//! (`make test-node`); with `CI=true` a missing node fails the tests.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;

const SYSTEM: &str = "ecr-pull-secrets";

/// What `tests/testenv.sh up --node` exports.
struct Node {
    ip: String,
    /// The seeded private image, under its ECR host name.
    image: String,
}

fn node() -> Option<Node> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let vars = (var("TESTENV_NODE_IP"), var("ECR_REGISTRY_IMAGE"));
    let (Some(ip), Some(image)) = vars else {
        let message = "no test node: run through `tests/testenv.sh run --node -- cargo test --test e2e_node` \
                       (or `make test-node`)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
        return None;
    };
    Some(Node { ip, image })
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Builds the image (cached by tests/image.sh) and imports it into the node's containerd, once.
fn import_image() {
    static IMPORTED: OnceLock<()> = OnceLock::new();
    IMPORTED.get_or_init(|| {
        let started = Instant::now();
        let out = run(repo().join("tests/image.sh").to_str().unwrap(), &["build"]);
        let archive = out.lines().next().expect("the archive path").to_string();
        run(
            repo().join("tests/testenv.sh").to_str().unwrap(),
            &["import-image", &archive],
        );
        eprintln!(
            "figure: image built and imported in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    });
}

/// The ECR emulator as the pods reach it (through the node's bridge address).
fn emulator_from_pods(node: &Node) -> String {
    let url = std::env::var("AWS_ENDPOINT_URL_ECR").expect("AWS_ENDPOINT_URL_ECR");
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    format!("http://{}:{port}", node.ip)
}

/// The controller's settings for the test (endpoint, keys, ServiceAccounts to patch).
async fn configure(client: &Client, node: &Node) {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "ecr-test-aws"},
        "data": {
            "AWS_ENDPOINT_URL_ECR": emulator_from_pods(node),
            "AWS_EC2_METADATA_DISABLED": "true",
            "ECR_PULL_SECRETS_SERVICE_ACCOUNTS": "default",
        },
    }))
    .unwrap();
    config_maps
        .patch(
            "ecr-test-aws",
            &PatchParams::apply("e2e-node").force(),
            &Patch::Apply(&config),
        )
        .await
        .unwrap();
    put_credentials(
        client,
        SYSTEM,
        "aws-credentials",
        "AKIATESTENV000000001",
        "testenv-secret-access-key-not-a-real-one",
    )
    .await;
}

/// Pods of the controller that are Ready (by the kubelet's readiness probe).
async fn ready_replicas(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=ecr-pull-secrets"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

async fn leader(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    leases
        .get_opt("ecr-pull-secrets")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// `kubectl apply -k tests/node` (the shipped base plus the test overlay), then two Ready
/// replicas and one leader. Returns the seconds until both were Ready.
async fn deploy_with_kustomize(client: &Client, node: &Node) -> f64 {
    remove_pull_secrets(client).await;
    import_image();
    let started = Instant::now();
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        repo().join("tests/node").to_str().unwrap(),
    ]);
    configure(client, node).await;
    wait_ready(client, 2).await;
    started.elapsed().as_secs_f64()
}

async fn wait_ready(client: &Client, replicas: usize) {
    eventually(
        &format!("{replicas} Ready replicas and a leader among them"),
        Duration::from_secs(120),
        || async {
            let ready = ready_replicas(client).await;
            let leader = leader(client).await?;
            (ready.len() == replicas && ready.iter().any(|p| p.name_any() == leader)).then_some(())
        },
    )
    .await;
}

/// Removes whatever a scenario deployed (kustomize or Helm) and waits for the pods to go.
async fn undeploy(client: &Client) {
    let _ = Command::new("kubectl")
        .args(["delete", "--ignore-not-found", "--wait=false", "-k"])
        .arg(repo().join("tests/node"))
        .output();
    // The namespace too (the next scenario creates it again): the node's namespace controller
    // removes its content first.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(SYSTEM, &DeleteParams::default()).await;
    eventually(
        "the controller's namespace gone",
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(SYSTEM)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// Removes the pull secrets a previous scenario's controller wrote: a new controller with the
/// same configuration would adopt their tokens (a takeover), where each scenario means to start
/// from a fetch with the token lifetime it set. Retried: the admission policy, which refuses
/// anyone but the controller, may not be gone yet.
async fn remove_pull_secrets(client: &Client) {
    let secrets: Api<Secret> = Api::all(client.clone());
    let ours = ListParams::default()
        .fields("metadata.name=ecr-pull-secret")
        .labels("app.kubernetes.io/managed-by=ecr-pull-secrets");
    eventually(
        "the pull secrets removed",
        Duration::from_secs(60),
        || async {
            let left = secrets.list_metadata(&ours).await.ok()?;
            for secret in &left.items {
                let namespaced: Api<Secret> =
                    Api::namespaced(client.clone(), secret.metadata.namespace.as_deref()?);
                let _ = namespaced
                    .delete("ecr-pull-secret", &DeleteParams::default())
                    .await;
            }
            left.items.is_empty().then_some(())
        },
    )
    .await;
}

async fn secret_in(client: &Client, namespace: &str) -> Option<Secret> {
    get_secret(client, namespace, "ecr-pull-secret").await
}

/// A pod in `namespace` running the private ECR image, always pulled, with nothing about pull
/// secrets in its spec: the credentials come from the `default` ServiceAccount.
async fn start_workload(client: &Client, namespace: &str, name: &str, image: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "hello", "image": image, "imagePullPolicy": "Always"}],
            "terminationGracePeriodSeconds": 1,
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

/// The pod's phase, or the waiting reason of its container (ErrImagePull, ImagePullBackOff).
async fn pod_state(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get_opt(name).await.ok()??;
    let status = pod.status?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next();
    waiting.or(status.phase)
}

async fn wait_running(client: &Client, namespace: &str, name: &str) -> f64 {
    let started = Instant::now();
    eventually(
        &format!("pod {namespace}/{name} Running (pulled with our secret)"),
        Duration::from_secs(90),
        || async { (pod_state(client, namespace, name).await? == "Running").then_some(()) },
    )
    .await;
    started.elapsed().as_secs_f64()
}

/// A new namespace whose `default` ServiceAccount (made by kube-controller-manager) carries
/// our pull secret (patched by the controller).
async fn served_namespace(client: &Client, name: &str) {
    create_namespace(client, name).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    eventually(
        &format!("{name}: the default ServiceAccount patched with our secret"),
        Duration::from_secs(60),
        || async {
            let sa = accounts.get_opt("default").await.ok()??;
            sa.image_pull_secrets?
                .iter()
                .any(|r| r.name == "ecr-pull-secret")
                .then_some(())
        },
    )
    .await;
    eventually(
        &format!("{name}: the pull secret"),
        Duration::from_secs(30),
        || async { secret_in(client, name).await },
    )
    .await;
}

#[tokio::test]
async fn the_shipped_deployment_runs_ready_under_the_kubelet_and_its_secret_pulls_a_private_image()
{
    let (Some(env), Some(node)) = (testenv(), node()) else {
        return;
    };
    let client = client().await;
    let seconds = deploy_with_kustomize(&client, &node).await;
    eprintln!("figure: kustomize base to 2 Ready replicas with a leader in {seconds:.1} s");

    // The shipped securityContext, as the kubelet ran it.
    let pods = ready_replicas(&client).await;
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        let security = spec.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let container = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(container.read_only_root_filesystem, Some(true));
        assert_eq!(container.allow_privilege_escalation, Some(false));
        assert_eq!(
            container.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        let status = pod.status.as_ref().unwrap();
        let restarts: i32 = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        assert_eq!(restarts, 0, "{}: restarted", pod.name_any());
    }

    // A workload that names no pull secret pulls the private image through `default`.
    let p = unique("node-pull");
    served_namespace(&client, &p).await;
    let secret = secret_in(&client, &p).await.unwrap();
    let password = decode(&secret).password;
    assert!(
        env.issuing_call(&password).is_some(),
        "a token the emulator issued"
    );
    start_workload(&client, &p, "hello", &node.image).await;
    let seconds = wait_running(&client, &p, "hello").await;
    eprintln!("figure: private ECR image pulled and Running in {seconds:.1} s");

    delete_namespaces(&client, std::slice::from_ref(&p)).await;
    undeploy(&client).await;
}

#[tokio::test]
async fn without_the_controller_expired_tokens_fail_the_pull() {
    let (Some(env), Some(node)) = (testenv(), node()) else {
        return;
    };
    let client = client().await;
    env.set_emulator(&json!({"ttl_seconds": 20}));
    deploy_with_kustomize(&client, &node).await;
    let p = unique("node-expired");
    served_namespace(&client, &p).await;
    // Nobody refreshes: the token written runs out.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    deployments
        .patch(
            SYSTEM,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    eventually("no controller replica", Duration::from_secs(60), || async {
        ready_replicas(&client).await.is_empty().then_some(())
    })
    .await;
    let expires = decode(&secret_in(&client, &p).await.unwrap()).expires_at;
    eventually("the token expired", Duration::from_secs(40), || async {
        (SystemTime::now() > expires + Duration::from_secs(1)).then_some(())
    })
    .await;
    start_workload(&client, &p, "hello", &node.image).await;
    let state = eventually(
        "the pull refused (ErrImagePull or ImagePullBackOff)",
        Duration::from_secs(60),
        || async {
            let state = pod_state(&client, &p, "hello").await?;
            matches!(state.as_str(), "ErrImagePull" | "ImagePullBackOff").then_some(state)
        },
    )
    .await;
    assert_ne!(state, "Running");
    env.set_emulator(&json!({}));
    delete_namespaces(&client, std::slice::from_ref(&p)).await;
    undeploy(&client).await;
}

#[tokio::test]
async fn pods_created_after_several_rotations_still_pull() {
    let (Some(env), Some(node)) = (testenv(), node()) else {
        return;
    };
    let client = client().await;
    env.set_emulator(&json!({"ttl_seconds": 20}));
    deploy_with_kustomize(&client, &node).await;
    let p = unique("node-rotate");
    served_namespace(&client, &p).await;
    let mut seen = BTreeSet::new();
    for round in 0..3 {
        let password = eventually(
            &format!("rotation {round}"),
            Duration::from_secs(40),
            || async {
                let password = decode(&secret_in(&client, &p).await?).password;
                (!seen.contains(&password)).then_some(password)
            },
        )
        .await;
        seen.insert(password);
    }
    start_workload(&client, &p, "hello", &node.image).await;
    let seconds = wait_running(&client, &p, "hello").await;
    eprintln!(
        "figure: after {} tokens, a new pod pulled in {seconds:.1} s",
        seen.len()
    );
    env.set_emulator(&json!({}));
    delete_namespaces(&client, std::slice::from_ref(&p)).await;
    undeploy(&client).await;
}

#[tokio::test]
async fn deleting_the_leader_pod_and_a_rollout_restart_hand_over() {
    let (Some(env), Some(node)) = (testenv(), node()) else {
        return;
    };
    let client = client().await;
    deploy_with_kustomize(&client, &node).await;
    let warm = unique("node-ha");
    served_namespace(&client, &warm).await;

    // The leader's pod deleted: another replica leads and writes a namespace created after the
    // deletion, all within the lease duration + 2 s of the delete.
    let old = leader(&client).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let started = Instant::now();
    pods.delete(&old, &DeleteParams::default()).await.unwrap();
    let new = eventually(
        "another replica leading",
        Duration::from_secs(17),
        || async { leader(&client).await.filter(|h| *h != old) },
    )
    .await;
    let handover = started.elapsed().as_secs_f64();
    let late = format!("{warm}-late");
    create_namespace(&client, &late).await;
    eventually(
        "the new leader writing the new namespace",
        Duration::from_secs(17).saturating_sub(started.elapsed()),
        || async { secret_in(&client, &late).await },
    )
    .await;
    let failover = started.elapsed().as_secs_f64();
    eprintln!(
        "figure: leader pod {old} deleted -> {new} leads after {handover:.2} s, a new namespace \
         written after {failover:.2} s"
    );
    wait_ready(&client, 2).await;

    // A rollout restart: handover, no failed pull; writes and AWS calls counted.
    let recorder = Recorder::start(&client, "ecr-pull-secret");
    eventually("the recorder listed", Duration::from_secs(10), || async {
        (!recorder.snapshot().is_empty()).then_some(())
    })
    .await;
    let (versions_before, calls_before) = (recorder.snapshot().len(), env.aws_calls());
    let started = Instant::now();
    kubectl(&[
        "-n",
        SYSTEM,
        "rollout",
        "restart",
        "deployment/ecr-pull-secrets",
    ]);
    kubectl(&[
        "-n",
        SYSTEM,
        "rollout",
        "status",
        "deployment/ecr-pull-secrets",
        "--timeout=180s",
    ]);
    wait_ready(&client, 2).await;
    let rollout = started.elapsed().as_secs_f64();
    start_workload(&client, &warm, "after-rollout", &node.image).await;
    wait_running(&client, &warm, "after-rollout").await;
    let writes = recorder.snapshot().len() - versions_before;
    let calls = env.aws_calls() - calls_before;
    eprintln!(
        "figure: rollout restart in {rollout:.1} s: {writes} Secret writes, {calls} AWS calls"
    );
    // Each new leader adopts the token the one before wrote: nothing fetched, nothing rewritten.
    assert_eq!(
        (writes, calls),
        (0, 0),
        "Secret writes and AWS calls during a rollout restart"
    );
    delete_namespaces(&client, &[warm, late]).await;
    undeploy(&client).await;
}

#[tokio::test]
async fn the_helm_chart_runs_ready_under_the_kubelet() {
    let (Some(_env), Some(node)) = (testenv(), node()) else {
        return;
    };
    let client = client().await;
    import_image();
    let helm = run(repo().join("tests/testenv.sh").to_str().unwrap(), &["helm"]);
    let helm = helm.trim();
    let started = Instant::now();
    remove_pull_secrets(&client).await;
    create_namespace(&client, SYSTEM).await;
    put_credentials(
        &client,
        SYSTEM,
        "aws-credentials",
        "AKIATESTENV000000001",
        "testenv-secret-access-key-not-a-real-one",
    )
    .await;
    let endpoint = emulator_from_pods(&node);
    run(
        helm,
        &[
            "install",
            "ecr-pull-secrets",
            repo()
                .join("deploy/helm/ecr-pull-secrets")
                .to_str()
                .unwrap(),
            "-n",
            SYSTEM,
            "--set",
            "image.repository=localhost/ecr-pull-secrets",
            "--set",
            "image.tag=dev",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "region=us-east-1",
            "--set",
            "credentials.existingSecret=aws-credentials",
            "--set",
            &format!("extraEnv[0].name=AWS_ENDPOINT_URL_ECR,extraEnv[0].value={endpoint}"),
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    wait_ready(&client, 2).await;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("figure: Helm chart to 2 Ready replicas with a leader in {seconds:.1} s");
    let p = unique("node-helm");
    create_namespace(&client, &p).await;
    eventually(
        "the Helm release writing",
        Duration::from_secs(30),
        || async { secret_in(&client, &p).await },
    )
    .await;
    run(
        helm,
        &["uninstall", "ecr-pull-secrets", "-n", SYSTEM, "--wait"],
    );
    delete_namespaces(&client, std::slice::from_ref(&p)).await;
    undeploy(&client).await;
}

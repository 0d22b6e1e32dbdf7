//! End to end: EcrPullSecret resources on a real kube-apiserver + etcd and the ECR emulator.
//! Run through `tests/testenv.sh run -- cargo test --test e2e_resources -- --test-threads=1`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ecr_pull_secrets::core::crd::{EcrPullSecret, OWNER_LABEL};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;

/// Waits until resource `name` is Ready with `synced` namespaces, and returns it.
async fn ready(api: &Api<EcrPullSecret>, name: &str, synced: u32) -> EcrPullSecret {
    eventually(
        &format!("EcrPullSecret {name} Ready with {synced} namespaces synced"),
        // Long enough for a retry after an outage (backoff up to 32 s by then).
        Duration::from_secs(60),
        || async {
            let r = api.get(name).await.ok()?;
            let counts = r.status.as_ref()?.namespaces.clone()?;
            let is_ready = resource_condition(&r, "Ready")?.0 == "True";
            (is_ready && counts.synced == synced).then_some(r)
        },
    )
    .await
}

/// Owner label of the Secret `name` in `namespace`, if it exists.
async fn owner(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let secret = get_secret(client, namespace, name).await?;
    Some(
        secret
            .labels()
            .get(OWNER_LABEL)
            .cloned()
            .unwrap_or_default(),
    )
}

/// Two resources side by side under one controller (resources only), both Ready. A selects the
/// namespaces labelled team=<p> (a1, a2, shared) and names ServiceAccount a1/default; B includes
/// <p>-b* and shared, in another region; other is nobody's. Each has its own keys, unique to this
/// fixture, so no other scenario's calls or outage count here.
struct TwoResources {
    env: TestEnv,
    client: Client,
    api: Api<EcrPullSecret>,
    namespaces: Namespaces,
    key_a: String,
    key_b: String,
    name_a: String,
    name_b: String,
    secret_a: String,
    secret_b: String,
    /// A and B as first seen Ready.
    a: EcrPullSecret,
    b: EcrPullSecret,
    controller: Controller,
}

struct Namespaces {
    a1: String,
    a2: String,
    shared: String,
    b1: String,
    other: String,
    controller: String,
}

/// Short tokens, so an outage shows within seconds.
const TTL_SECONDS: u64 = 20;

async fn two_resources() -> Option<TwoResources> {
    let env = testenv()?;
    let client = client().await;
    install_crd();
    let p = unique("crd");
    let team = BTreeMap::from([("team".to_string(), p.clone())]);
    let ns = Namespaces {
        a1: format!("{p}-a1"),
        a2: format!("{p}-a2"),
        shared: format!("{p}-shared"),
        b1: format!("{p}-b1"),
        other: format!("{p}-other"),
        controller: format!("{p}-ctl"),
    };
    for name in [&ns.a1, &ns.a2, &ns.shared] {
        create_namespace_labeled(&client, name, team.clone()).await;
    }
    for name in [&ns.b1, &ns.other, &ns.controller] {
        create_namespace(&client, name).await;
    }
    // A's ServiceAccount, patched by A.
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.a1)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await
        .unwrap();
    let n = p.rsplit('-').next().unwrap();
    let (key_a, key_b) = (format!("AKIARESOURCEA{n}"), format!("AKIARESOURCEB{n}"));
    put_credentials(
        &client,
        &ns.controller,
        "keys-a",
        &key_a,
        "resource-a-secret-key",
    )
    .await;
    put_credentials(
        &client,
        &ns.controller,
        "keys-b",
        &key_b,
        "resource-b-secret-key",
    )
    .await;
    env.set_emulator(&json!({ "ttl_seconds": TTL_SECONDS }));

    let api: Api<EcrPullSecret> = Api::all(client.clone());
    let (name_a, name_b) = (format!("{p}-a"), format!("{p}-b"));
    let (secret_a, secret_b) = (format!("pull-a-{p}"), format!("pull-b-{p}"));
    let spec_a = json!({
        "secretName": secret_a,
        "registries": [{"accountId": "123456789012", "region": "us-east-1"}],
        "namespaces": {"selector": {"matchLabels": {"team": p}}},
        "serviceAccounts": ["default"],
        "credentials": {"secretRef": {"name": "keys-a"}},
    });
    let spec_b = json!({
        "secretName": secret_b,
        "registries": [{"host": "123456789012.dkr.ecr.eu-west-1.amazonaws.com"}],
        "namespaces": {"include": [format!("{p}-b*"), ns.shared]},
        "credentials": {"secretRef": {"name": "keys-b"}},
        "writes": {"qps": 5, "burst": 5},
    });
    for (name, spec) in [(&name_a, spec_a), (&name_b, spec_b)] {
        api.create(&PostParams::default(), &ecr_pull_secret(name, spec))
            .await
            .unwrap();
    }
    // Resources only: no flag-configured secret (AWS_REGION empty).
    let controller = env.controller_with_env(
        &p,
        &["--resources", "--namespace", &ns.controller],
        &[("AWS_REGION", "")],
    );
    let a = ready(&api, &name_a, 3).await;
    let b = ready(&api, &name_b, 2).await;
    Some(TwoResources {
        env,
        client,
        api,
        namespaces: ns,
        key_a,
        key_b,
        name_a,
        name_b,
        secret_a,
        secret_b,
        a,
        b,
        controller,
    })
}

impl TwoResources {
    /// Names on a1/default's imagePullSecrets, once A's entry is there.
    async fn entries_once_a_is_listed(&self) -> Vec<String> {
        let accounts: Api<ServiceAccount> =
            Api::namespaced(self.client.clone(), &self.namespaces.a1);
        eventually(
            "A's entry on a1/default",
            Duration::from_secs(10),
            || async {
                let sa = accounts.get("default").await.ok()?;
                let names: Vec<String> = sa
                    .image_pull_secrets
                    .iter()
                    .flatten()
                    .map(|r| r.name.clone())
                    .collect();
                names.contains(&self.secret_a).then_some(names)
            },
        )
        .await
    }

    /// An AWS outage of B's identity only; returns B once it is Degraded.
    async fn outage_of_b(&self) -> EcrPullSecret {
        self.env.set_emulator(
            &json!({ "ttl_seconds": TTL_SECONDS, "fail": "5xx", "fail_access_keys": [self.key_b] }),
        );
        eventually(
            "B Degraded by the outage",
            Duration::from_secs(40),
            || async {
                let b = self.api.get(&self.name_b).await.ok()?;
                (resource_condition(&b, "Degraded")?.0 == "True").then_some(b)
            },
        )
        .await
    }

    async fn delete(&self, name: &str) {
        self.api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            &format!("{name} gone (finalizer done)"),
            Duration::from_secs(30),
            || async {
                self.api
                    .get_opt(name)
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }

    /// Deletes what is left while the controller still runs (it removes the finalizers).
    async fn finish(self) {
        for name in [&self.name_a, &self.name_b] {
            if self.api.get_opt(name).await.unwrap().is_some() {
                self.delete(name).await;
            }
        }
        drop(self.controller);
        self.env.set_emulator(&json!({}));
        let ns = self.namespaces;
        delete_namespaces(
            &self.client,
            &[ns.a1, ns.a2, ns.shared, ns.b1, ns.other, ns.controller],
        )
        .await;
    }
}

#[tokio::test]
async fn side_by_side_resources_report_ready_with_finalizer_generation_and_expiry() {
    let Some(f) = two_resources().await else {
        return;
    };
    assert!(
        f.a.finalizers()
            .contains(&"ecr-pull-secrets.io/cleanup".to_string())
    );
    assert_eq!(f.a.status.as_ref().unwrap().observed_generation, Some(1));
    assert!(f.b.status.as_ref().unwrap().token_expires_at.is_some());
    f.finish().await;
}

#[tokio::test]
async fn side_by_side_resources_write_only_where_selected_labelled_with_their_owner() {
    let Some(f) = two_resources().await else {
        return;
    };
    let (ns, secret_a, secret_b) = (&f.namespaces, &f.secret_a, &f.secret_b);
    // Both secrets in the overlap; each elsewhere only where selected.
    for (ns, expect_a, expect_b) in [
        (&ns.a1, true, false),
        (&ns.a2, true, false),
        (&ns.shared, true, true),
        (&ns.b1, false, true),
        (&ns.other, false, false),
    ] {
        let (has_a, has_b) = (
            owner(&f.client, ns, secret_a).await,
            owner(&f.client, ns, secret_b).await,
        );
        assert_eq!(has_a.is_some(), expect_a, "{secret_a} in {ns}");
        assert_eq!(has_b.is_some(), expect_b, "{secret_b} in {ns}");
        assert!(has_a.is_none_or(|o| o == f.name_a));
        assert!(has_b.is_none_or(|o| o == f.name_b));
    }
    f.finish().await;
}

#[tokio::test]
async fn side_by_side_resources_sign_with_their_own_keys_in_their_own_region() {
    let Some(f) = two_resources().await else {
        return;
    };
    let calls = f.env.call_log();
    let signed_by = |key: &str| {
        calls
            .iter()
            .filter(|c| c["access_key_id"] == key)
            .map(|c| c["region"].as_str().unwrap_or("").to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(signed_by(&f.key_a), ["us-east-1".to_string()].into());
    assert_eq!(signed_by(&f.key_b), ["eu-west-1".to_string()].into());
    f.finish().await;
}

#[tokio::test]
async fn a_resource_adds_its_secret_to_the_service_accounts_it_names() {
    let Some(f) = two_resources().await else {
        return;
    };
    assert_eq!(f.entries_once_a_is_listed().await, vec![f.secret_a.clone()]);
    f.finish().await;
}

#[tokio::test]
async fn kubectl_shows_the_printer_columns() {
    let Some(f) = two_resources().await else {
        return;
    };
    let table = kubectl(&["get", "ecrpullsecrets", &f.name_a, &f.name_b]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SECRET", "NAMESPACES", "EXPIRES", "AGE"]
    );
    assert!(
        table.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols[..4] == [f.name_a.as_str(), "True", f.secret_a.as_str(), "3"]
        }),
        "{table}"
    );
    f.finish().await;
}

#[tokio::test]
async fn an_outage_of_one_identity_degrades_only_its_resource() {
    let Some(f) = two_resources().await else {
        return;
    };
    let b = f.outage_of_b().await;
    let (_, reason, message) = resource_condition(&b, "Degraded").unwrap();
    assert_eq!(reason, "TokenRefreshFailing", "{message}");
    assert!(message.contains("eu-west-1"), "{message}");
    assert!(message.contains("valid until"), "{message}");
    assert_eq!(resource_condition(&b, "Ready").unwrap().0, "False");
    let a_during = f.api.get(&f.name_a).await.unwrap();
    assert_eq!(resource_condition(&a_during, "Ready").unwrap().0, "True");
    f.finish().await;
}

#[tokio::test]
async fn an_outage_shows_in_the_metrics_per_resource_and_failing_identity() {
    let Some(f) = two_resources().await else {
        return;
    };
    f.outage_of_b().await;
    let address = f.controller.admin_address().await;
    let metrics = eventually(
        "B not ready in the metrics",
        Duration::from_secs(10),
        || async {
            let (_, text) = http_get(&address, "/metrics").await?;
            let b = sample(
                &text,
                &format!(
                    "ecr_pull_secrets_resource_ready{{resource=\"{}\"}}",
                    f.name_b
                ),
            )?;
            (b == 0.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "ecr_pull_secrets_resource_ready{{resource=\"{}\"}}",
                f.name_a
            )
        ),
        Some(1.0)
    );
    let failures = sample(
        &metrics,
        &format!(
            "ecr_pull_secrets_token_refresh_consecutive_failures{{identity=\"{}/eu-west-1\"}}",
            f.name_b
        ),
    );
    assert!(failures.is_some_and(|f| f > 0.0), "{metrics}");
    f.finish().await;
}

#[tokio::test]
async fn a_resource_keeps_refreshing_during_anothers_outage() {
    let Some(f) = two_resources().await else {
        return;
    };
    f.outage_of_b().await;
    let a_during = f.api.get(&f.name_a).await.unwrap();
    let refreshed_before = a_during.status.unwrap().last_refresh_time.unwrap();
    eventually(
        "A refreshing during B's outage",
        Duration::from_secs(30),
        || async {
            let a = f.api.get(&f.name_a).await.ok()?;
            let status = a.status.clone()?;
            let ready = resource_condition(&a, "Ready")?.0 == "True";
            (ready && status.last_refresh_time? > refreshed_before).then_some(())
        },
    )
    .await;
    f.finish().await;
}

#[tokio::test]
async fn a_resource_is_ready_again_once_its_outage_ends() {
    let Some(f) = two_resources().await else {
        return;
    };
    f.outage_of_b().await;
    f.env.set_emulator(&json!({ "ttl_seconds": TTL_SECONDS }));
    ready(&f.api, &f.name_b, 2).await;
    f.finish().await;
}

#[tokio::test]
async fn deleting_a_resource_removes_exactly_its_secrets_and_service_account_entry() {
    let Some(f) = two_resources().await else {
        return;
    };
    // A's entry first, so that its absence below means it was removed.
    f.entries_once_a_is_listed().await;
    f.delete(&f.name_a).await;
    let ns = &f.namespaces;
    for ns in [&ns.a1, &ns.a2, &ns.shared] {
        assert_eq!(
            owner(&f.client, ns, &f.secret_a).await,
            None,
            "{} left in {ns}",
            f.secret_a
        );
    }
    for ns in [&ns.shared, &ns.b1] {
        assert_eq!(
            owner(&f.client, ns, &f.secret_b).await.as_deref(),
            Some(f.name_b.as_str())
        );
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(f.client.clone(), &ns.a1);
    let sa = accounts.get("default").await.unwrap();
    assert!(sa.image_pull_secrets.unwrap_or_default().is_empty());
    ready(&f.api, &f.name_b, 2).await;
    f.finish().await;
}

#[tokio::test]
async fn deleted_resources_leave_no_metric_series() {
    let Some(f) = two_resources().await else {
        return;
    };
    let address = f.controller.admin_address().await;
    let series = |name: &str| format!("ecr_pull_secrets_resource_ready{{resource=\"{name}\"}}");
    // Both series first, so that their absence below means they were removed.
    eventually(
        "both resources in the metrics",
        Duration::from_secs(10),
        || async {
            let (_, text) = http_get(&address, "/metrics").await?;
            (sample(&text, &series(&f.name_a)).is_some()
                && sample(&text, &series(&f.name_b)).is_some())
            .then_some(())
        },
    )
    .await;
    f.delete(&f.name_a).await;
    f.delete(&f.name_b).await;
    let (_, text) = http_get(&address, "/metrics").await.unwrap();
    assert!(
        !text.contains(&f.name_a) && !text.contains(&f.name_b),
        "{text}"
    );
    f.finish().await;
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_api_server_with_readable_messages() {
    let Some(_env) = testenv() else { return };
    let client = client().await;
    install_crd();
    // Untyped, so specs the Rust types would refuse still reach the API server.
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<EcrPullSecret>(&()));
    let p = unique("invalid");
    let create = |spec: serde_json::Value| {
        let api = api.clone();
        let p = p.clone();
        async move {
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "ecr-pull-secrets.io/v1alpha1",
                "kind": "EcrPullSecret",
                "metadata": {"name": format!("{p}-{}", rand::random::<u16>())},
                "spec": spec,
            }))
            .unwrap();
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => panic!("accepted: {object:?}"),
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{status:?}");
                    status.message
                }
                Err(other) => panic!("{other}"),
            }
        }
    };
    let cases = [
        (
            json!({"secretName": "s"}),
            "name at least one registry in spec.registries, or set spec.ecrPublic: true",
        ),
        (
            json!({"secretName": "Bad_Name", "ecrPublic": true}),
            "secretName must be a DNS subdomain",
        ),
        (
            json!({"secretName": "s", "registries": [{"host": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"}]}),
            "host must look like 123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        ),
        (
            json!({"secretName": "s", "registries": [{"accountId": "123456789012"}]}),
            "each registry needs either host, or accountId and region (not both)",
        ),
        (
            json!({"secretName": "s", "registries": [{"accountId": "1234", "region": "eu-west-1"}]}),
            "accountId must be the 12-digit AWS account ID",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "serviceAccounts": ["*", "default"]}),
            "'*' (every ServiceAccount) cannot be combined with names",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "credentials": {"externalId": "abc"}}),
            "credentials.externalId needs credentials.roleArn",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "credentials": {"roleArn": "puller"}}),
            "roleArn must be an IAM role ARN",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "refresh": {"frequency": "10s"}}),
            "frequency must be at least 1m",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "refresh": {"frequency": "1 day"}}),
            "frequency must be a duration such as 30m, 6h or 1h30m",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "refresh": {"fraction": 1.5}}),
            "fraction must be between 0 and 1 (exclusive)",
        ),
        (
            json!({"secretName": "s", "ecrPublic": true, "writes": {"qps": 0}}),
            "spec.writes.qps in body should be greater than or equal to 1",
        ),
    ];
    for (spec, expected) in cases {
        let message = create(spec.clone()).await;
        assert!(message.contains(expected), "{spec}: {message}");
    }

    // secretName is immutable: a rename would strand the old secrets.
    let name = format!("{p}-immutable");
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ecr-pull-secrets.io/v1alpha1",
        "kind": "EcrPullSecret",
        "metadata": {"name": name},
        "spec": {"secretName": "first", "ecrPublic": true},
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
    let rename = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secretName": "second"}})),
        )
        .await
        .unwrap_err();
    assert!(
        rename.to_string().contains("secretName is immutable"),
        "{rename}"
    );
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

/// Resources that cannot run next to a healthy one and the flag-configured secret, under one
/// controller (flags and resources side by side), once the healthy one is Ready. Each resource is
/// `<p>-<suffix>`: `ok` is healthy; `twin` names ok's Secret and is created after it; `flags`
/// names the flag-configured secret; `glob` has a namespace pattern the schema accepts and the
/// controller refuses; `keys` names a credentials Secret that does not exist.
struct Blocked {
    client: Client,
    api: Api<EcrPullSecret>,
    p: String,
    /// Every resource, in the order they were created.
    names: Vec<String>,
    /// The one target namespace, of the flags and of every resource that selects namespaces.
    ns: String,
    controller_ns: String,
    flag_secret: String,
    controller: Controller,
}

async fn blocked() -> Option<Blocked> {
    let env = testenv()?;
    let client = client().await;
    install_crd();
    env.set_emulator(&json!({}));
    let p = unique("blocked");
    let (ns, controller_ns) = (format!("{p}-ns"), format!("{p}-ctl"));
    create_namespace(&client, &ns).await;
    create_namespace(&client, &controller_ns).await;
    let api: Api<EcrPullSecret> = Api::all(client.clone());
    let flag_secret = format!("flags-{p}");
    let registry = json!([{"host": env.default_registry()}]);
    let specs = [
        // Healthy.
        (
            "ok",
            json!({"secretName": format!("ok-{p}"), "registries": registry, "namespaces": {"include": [ns]}}),
        ),
        // Same secret name as "ok", created later (or, within the same second, named later): refused.
        (
            "twin",
            json!({"secretName": format!("ok-{p}"), "registries": registry, "namespaces": {"include": [ns]}}),
        ),
        // The flag-configured controller's name.
        (
            "flags",
            json!({"secretName": flag_secret, "registries": registry}),
        ),
        // Accepted by the schema, refused by the controller (not a namespace glob).
        (
            "glob",
            json!({"secretName": format!("glob-{p}"), "registries": registry, "namespaces": {"include": ["Team_A"]}}),
        ),
        // Its credentials Secret does not exist.
        (
            "keys",
            json!({"secretName": format!("keys-{p}"), "registries": registry, "credentials": {"secretRef": {"name": "missing"}}}),
        ),
    ];
    let mut names = Vec::new();
    for (suffix, spec) in specs {
        let name = format!("{p}-{suffix}");
        api.create(&PostParams::default(), &ecr_pull_secret(&name, spec))
            .await
            .unwrap();
        names.push(name);
    }
    // Flags and resources side by side.
    let controller = env.controller(
        &p,
        &[
            "--resources",
            "--namespace",
            &controller_ns,
            "--secret-name",
            &flag_secret,
            "--target-namespaces",
            &ns,
        ],
    );
    ready(&api, &format!("{p}-ok"), 1).await;
    Some(Blocked {
        client,
        api,
        p,
        names,
        ns,
        controller_ns,
        flag_secret,
        controller,
    })
}

impl Blocked {
    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.p)
    }

    /// Reason and message of resource `suffix`, once it is Degraded.
    async fn degraded(&self, suffix: &str) -> (String, String) {
        let name = self.name(suffix);
        let (_, reason, message) = eventually(
            &format!("{name} Degraded"),
            Duration::from_secs(30),
            || async {
                resource_condition(&self.api.get(&name).await.ok()?, "Degraded")
                    .filter(|c| c.0 == "True")
            },
        )
        .await;
        (reason, message)
    }

    /// Owner label of the Secret `ok-<p>` (the name `ok` and `twin` share), if it exists.
    async fn ok_secret_owner(&self) -> Option<String> {
        owner(&self.client, &self.ns, &format!("ok-{}", self.p)).await
    }

    /// Deletes every resource still there and waits until each is gone (finalizer done).
    async fn delete_all(&self) {
        for name in &self.names {
            let _ = self.api.delete(name, &DeleteParams::default()).await;
        }
        for name in &self.names {
            eventually(&format!("{name} gone"), Duration::from_secs(30), || async {
                self.api
                    .get_opt(name)
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            })
            .await;
        }
    }

    /// Deletes what is left while the controller still runs (it removes the finalizers).
    async fn finish(self) {
        self.delete_all().await;
        drop(self.controller);
        delete_namespaces(&self.client, &[self.ns, self.controller_ns]).await;
    }
}

#[tokio::test]
async fn a_resource_naming_the_secret_an_older_one_writes_is_degraded_naming_that_resource() {
    let Some(f) = blocked().await else { return };
    let (reason, message) = f.degraded("twin").await;
    assert_eq!(reason, "SecretNameInUse", "{message}");
    let p = &f.p;
    assert!(
        message.contains(&format!(
            "EcrPullSecret {p}-ok already writes Secret ok-{p}"
        )),
        "{message}"
    );
    f.finish().await;
}

#[tokio::test]
async fn a_resource_naming_the_flag_configured_secret_is_degraded_naming_the_flag() {
    let Some(f) = blocked().await else { return };
    let (reason, message) = f.degraded("flags").await;
    assert_eq!(reason, "SecretNameInUse", "{message}");
    assert!(message.contains("--secret-name"), "{message}");
    f.finish().await;
}

#[tokio::test]
async fn a_resource_with_an_invalid_namespace_pattern_is_degraded_as_an_invalid_spec() {
    let Some(f) = blocked().await else { return };
    let (reason, message) = f.degraded("glob").await;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(message.contains("Team_A"), "{message}");
    f.finish().await;
}

#[tokio::test]
async fn a_resource_whose_credentials_secret_is_missing_is_degraded_naming_it() {
    let Some(f) = blocked().await else { return };
    let (reason, message) = f.degraded("keys").await;
    assert_eq!(reason, "CredentialsUnavailable", "{message}");
    assert!(message.contains("missing"), "{message}");
    f.finish().await;
}

#[tokio::test]
async fn resources_that_cannot_run_leave_the_healthy_one_and_the_flag_configured_secret_working() {
    let Some(f) = blocked().await else { return };
    // The others refused first, so that what follows holds beside them.
    for suffix in ["twin", "flags", "glob", "keys"] {
        f.degraded(suffix).await;
    }
    ready(&f.api, &f.name("ok"), 1).await;
    assert!(get_secret(&f.client, &f.ns, &f.flag_secret).await.is_some());
    assert_eq!(f.ok_secret_owner().await, Some(f.name("ok")));
    f.finish().await;
}

#[tokio::test]
async fn check_resources_reports_every_resources_spec_and_fails_on_the_invalid_one() {
    let Some(f) = blocked().await else { return };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecr-pull-secrets"))
        .args(["check", "--resources", "--namespace", &f.controller_ns])
        .args([
            "--secret-name",
            &f.flag_secret,
            "--target-namespaces",
            &f.ns,
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    let p = &f.p;
    assert!(
        report.contains(&format!("EcrPullSecret {p}-glob: ")),
        "{report}"
    );
    assert!(report.contains("spec.namespaces.include"), "{report}");
    assert!(
        report.contains(&format!("EcrPullSecret {p}-ok: ")),
        "{report}"
    );
    f.finish().await;
}

#[tokio::test]
async fn the_younger_of_two_resources_naming_one_secret_takes_it_over_once_the_older_is_deleted() {
    let Some(f) = blocked().await else { return };
    // The younger refused and the secret the older's first, so that the takeover is a change.
    assert_eq!(f.degraded("twin").await.0, "SecretNameInUse");
    assert_eq!(f.ok_secret_owner().await, Some(f.name("ok")));
    f.api
        .delete(&f.name("ok"), &DeleteParams::default())
        .await
        .unwrap();
    ready(&f.api, &f.name("twin"), 1).await;
    assert_eq!(f.ok_secret_owner().await, Some(f.name("twin")));
    f.finish().await;
}

#[tokio::test]
async fn deleting_every_resource_leaves_the_flag_configured_secret_untouched() {
    let Some(f) = blocked().await else { return };
    // The secret written and the resource that names it refused first, so that the deletions
    // follow a resource that claimed it.
    let written = eventually(
        "the flag-configured secret written",
        Duration::from_secs(30),
        || async { get_secret(&f.client, &f.ns, &f.flag_secret).await },
    )
    .await;
    f.degraded("flags").await;
    f.delete_all().await;
    let kept = get_secret(&f.client, &f.ns, &f.flag_secret).await;
    assert!(kept.is_some());
    // Not deleted and written again: the same object.
    assert_eq!(kept.unwrap().metadata.uid, written.metadata.uid);
    f.finish().await;
}

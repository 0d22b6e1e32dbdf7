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

#[tokio::test]
async fn resources_side_by_side_outage_of_one_and_deletion_removes_exactly_its_secrets() {
    let Some(env) = testenv() else { return };
    let client = client().await;
    install_crd();
    let p = unique("crd");
    let team = BTreeMap::from([("team".to_string(), p.clone())]);
    let (a1, a2, shared, b1, other) = (
        format!("{p}-a1"),
        format!("{p}-a2"),
        format!("{p}-shared"),
        format!("{p}-b1"),
        format!("{p}-other"),
    );
    let controller_ns = format!("{p}-ctl");
    for ns in [&a1, &a2, &shared] {
        create_namespace_labeled(&client, ns, team.clone()).await;
    }
    for ns in [&b1, &other, &controller_ns] {
        create_namespace(&client, ns).await;
    }
    // A's ServiceAccount, patched by A.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &a1);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await
        .unwrap();
    // Two identities: each resource has its own keys.
    let (key_a, key_b) = ("AKIARESOURCEA0000001", "AKIARESOURCEB0000001");
    put_credentials(
        &client,
        &controller_ns,
        "keys-a",
        key_a,
        "resource-a-secret-key",
    )
    .await;
    put_credentials(
        &client,
        &controller_ns,
        "keys-b",
        key_b,
        "resource-b-secret-key",
    )
    .await;
    // Short tokens, so the outage below shows within seconds.
    env.set_emulator(&json!({ "ttl_seconds": 20 }));

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
        "namespaces": {"include": [format!("{p}-b*"), shared]},
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
        &["--resources", "--namespace", &controller_ns],
        &[("AWS_REGION", "")],
    );
    let a = ready(&api, &name_a, 3).await;
    let b = ready(&api, &name_b, 2).await;
    assert!(
        a.finalizers()
            .contains(&"ecr-pull-secrets.io/cleanup".to_string())
    );
    assert_eq!(a.status.as_ref().unwrap().observed_generation, Some(1));
    assert!(b.status.as_ref().unwrap().token_expires_at.is_some());

    // Both secrets in the overlap; each elsewhere only where selected; each labelled with its owner.
    for (ns, expect_a, expect_b) in [
        (&a1, true, false),
        (&a2, true, false),
        (&shared, true, true),
        (&b1, false, true),
        (&other, false, false),
    ] {
        let (has_a, has_b) = (
            owner(&client, ns, &secret_a).await,
            owner(&client, ns, &secret_b).await,
        );
        assert_eq!(has_a.is_some(), expect_a, "{secret_a} in {ns}");
        assert_eq!(has_b.is_some(), expect_b, "{secret_b} in {ns}");
        assert!(has_a.is_none_or(|o| o == name_a));
        assert!(has_b.is_none_or(|o| o == name_b));
    }
    // Each resource used its own keys and region.
    let calls = env.call_log();
    let signed_by = |key: &str| {
        calls
            .iter()
            .filter(|c| c["access_key_id"] == key)
            .map(|c| c["region"].as_str().unwrap_or("").to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(signed_by(key_a), ["us-east-1".to_string()].into());
    assert_eq!(signed_by(key_b), ["eu-west-1".to_string()].into());
    let sa = eventually(
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
            names.contains(&secret_a).then_some(names)
        },
    )
    .await;
    assert_eq!(sa, vec![secret_a.clone()]);

    // kubectl shows the printer columns.
    let table = kubectl(&["get", "ecrpullsecrets", &name_a, &name_b]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SECRET", "NAMESPACES", "EXPIRES", "AGE"]
    );
    assert!(
        table.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols[..4] == [name_a.as_str(), "True", secret_a.as_str(), "3"]
        }),
        "{table}"
    );

    // An AWS outage of B's identity: B goes Degraded, A stays Ready and keeps refreshing.
    env.set_emulator(&json!({ "ttl_seconds": 20, "fail": "5xx", "fail_access_keys": [key_b] }));
    let degraded = eventually(
        "B Degraded by the outage",
        Duration::from_secs(40),
        || async {
            let b = api.get(&name_b).await.ok()?;
            let (status, reason, message) = resource_condition(&b, "Degraded")?;
            (status == "True").then_some((reason, message, b))
        },
    )
    .await;
    assert_eq!(degraded.0, "TokenRefreshFailing", "{}", degraded.1);
    assert!(degraded.1.contains("eu-west-1"), "{}", degraded.1);
    assert!(degraded.1.contains("valid until"), "{}", degraded.1);
    assert_eq!(resource_condition(&degraded.2, "Ready").unwrap().0, "False");
    let a_during = api.get(&name_a).await.unwrap();
    assert_eq!(resource_condition(&a_during, "Ready").unwrap().0, "True");
    // The alerting series agree, per resource, and name the failing identity.
    let address = controller.admin_address().await;
    let metrics = eventually(
        "B not ready in the metrics",
        Duration::from_secs(10),
        || async {
            let (_, text) = http_get(&address, "/metrics").await?;
            let b = sample(
                &text,
                &format!("ecr_pull_secrets_resource_ready{{resource=\"{name_b}\"}}"),
            )?;
            (b == 0.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            &format!("ecr_pull_secrets_resource_ready{{resource=\"{name_a}\"}}")
        ),
        Some(1.0)
    );
    let failures = sample(
        &metrics,
        &format!(
            "ecr_pull_secrets_token_refresh_consecutive_failures{{identity=\"{name_b}/eu-west-1\"}}"
        ),
    );
    assert!(failures.is_some_and(|f| f > 0.0), "{metrics}");
    let refreshed_before = a_during.status.unwrap().last_refresh_time.unwrap();
    eventually(
        "A refreshing during B's outage",
        Duration::from_secs(30),
        || async {
            let a = api.get(&name_a).await.ok()?;
            let status = a.status.clone()?;
            let ready = resource_condition(&a, "Ready")?.0 == "True";
            (ready && status.last_refresh_time? > refreshed_before).then_some(())
        },
    )
    .await;
    env.set_emulator(&json!({ "ttl_seconds": 20 }));
    ready(&api, &name_b, 2).await;

    // Deleting A removes exactly A's secrets and its ServiceAccount entry.
    api.delete(&name_a, &DeleteParams::default()).await.unwrap();
    eventually(
        "A gone (finalizer done)",
        Duration::from_secs(30),
        || async { api.get_opt(&name_a).await.unwrap().is_none().then_some(()) },
    )
    .await;
    for ns in [&a1, &a2, &shared] {
        assert_eq!(
            owner(&client, ns, &secret_a).await,
            None,
            "{secret_a} left in {ns}"
        );
    }
    for ns in [&shared, &b1] {
        assert_eq!(
            owner(&client, ns, &secret_b).await.as_deref(),
            Some(name_b.as_str())
        );
    }
    let sa = accounts.get("default").await.unwrap();
    assert!(sa.image_pull_secrets.unwrap_or_default().is_empty());
    ready(&api, &name_b, 2).await;

    api.delete(&name_b, &DeleteParams::default()).await.unwrap();
    eventually("B gone", Duration::from_secs(30), || async {
        api.get_opt(&name_b).await.unwrap().is_none().then_some(())
    })
    .await;
    // Deleted resources leave no series behind.
    let (_, text) = http_get(&address, "/metrics").await.unwrap();
    assert!(!text.contains(&name_a) && !text.contains(&name_b), "{text}");
    drop(controller);
    env.set_emulator(&json!({}));
    delete_namespaces(&client, &[a1, a2, shared, b1, other, controller_ns]).await;
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

#[tokio::test]
async fn a_resource_that_cannot_run_says_why_and_the_others_are_unaffected() {
    let Some(env) = testenv() else { return };
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
    for (suffix, spec) in &specs {
        api.create(
            &PostParams::default(),
            &ecr_pull_secret(&format!("{p}-{suffix}"), spec.clone()),
        )
        .await
        .unwrap();
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
    for (suffix, reason, hint) in [
        (
            "twin",
            "SecretNameInUse",
            format!("EcrPullSecret {p}-ok already writes Secret ok-{p}"),
        ),
        ("flags", "SecretNameInUse", "--secret-name".to_string()),
        ("glob", "InvalidSpec", "Team_A".to_string()),
        ("keys", "CredentialsUnavailable", "missing".to_string()),
    ] {
        let name = format!("{p}-{suffix}");
        let (status, got, message) = eventually(
            &format!("{name} Degraded with {reason}"),
            Duration::from_secs(30),
            || async {
                resource_condition(&api.get(&name).await.ok()?, "Degraded")
                    .filter(|c| c.0 == "True")
            },
        )
        .await;
        assert_eq!(
            (status.as_str(), got.as_str()),
            ("True", reason),
            "{name}: {message}"
        );
        assert!(message.contains(&hint), "{name}: {message}");
    }
    ready(&api, &format!("{p}-ok"), 1).await;
    assert!(get_secret(&client, &ns, &flag_secret).await.is_some());
    let ok_secret = get_secret(&client, &ns, &format!("ok-{p}")).await.unwrap();
    assert_eq!(
        ok_secret.labels().get(OWNER_LABEL),
        Some(&format!("{p}-ok"))
    );

    // `check --resources` reports every resource's spec, and fails on the invalid one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecr-pull-secrets"))
        .args(["check", "--resources", "--namespace", &controller_ns])
        .args(["--secret-name", &flag_secret, "--target-namespaces", &ns])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains(&format!("EcrPullSecret {p}-glob: ")),
        "{report}"
    );
    assert!(report.contains("spec.namespaces.include"), "{report}");
    assert!(
        report.contains(&format!("EcrPullSecret {p}-ok: ")),
        "{report}"
    );

    // Once the older twin is gone, the younger one takes over the name.
    api.delete(&format!("{p}-ok"), &DeleteParams::default())
        .await
        .unwrap();
    ready(&api, &format!("{p}-twin"), 1).await;
    let taken = get_secret(&client, &ns, &format!("ok-{p}")).await.unwrap();
    assert_eq!(taken.labels().get(OWNER_LABEL), Some(&format!("{p}-twin")));

    for (suffix, _) in &specs {
        let _ = api
            .delete(&format!("{p}-{suffix}"), &DeleteParams::default())
            .await;
    }
    for (suffix, _) in &specs {
        let name = format!("{p}-{suffix}");
        eventually(&format!("{name} gone"), Duration::from_secs(30), || async {
            api.get_opt(&name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    // The flag-configured secret is untouched by every deletion.
    assert!(get_secret(&client, &ns, &flag_secret).await.is_some());
    drop(controller);
    delete_namespaces(&client, &[ns, controller_ns]).await;
}

//! Checks of the shipped files that need no cluster: the CRD in deploy/crd/ (and the Helm
//! chart's copy) is the one the types generate, the examples in deploy/examples/ make valid
//! configurations and their README names the Secrets each needs, the admission policy allows
//! the names the ClusterRole grants to the ServiceAccount it binds, the PrometheusRule carries
//! the plain rules file unchanged, and every metric the alerts and the Grafana dashboard query
//! is one the controller exports.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use ecr_pull_secrets::cli::args::{Cli, Command};
use ecr_pull_secrets::core::crd::EcrPullSecret;
use ecr_pull_secrets::telemetry::metrics::Metrics;
use serde::Deserialize;
use serde_json::Value;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every sample name the controller can expose, from the `# TYPE` lines of its exposition
/// once every recording method ran (an empty labelled family prints nothing).
fn exported() -> BTreeSet<String> {
    let m = Metrics::new();
    m.leadership_acquired();
    m.token_fetched("us-east-1", std::time::SystemTime::now());
    m.token_fetch_failed("us-east-1", "transient", "throttled");
    m.aws_call("us-east-1", "ok");
    m.write("apply");
    m.namespace_moved(None, Some("synced"));
    m.reconciled("written", std::time::Duration::from_millis(3));
    m.limiter_waited(std::time::Duration::ZERO);
    m.enqueued("default");
    m.resource_ready("team-a", Some(true));
    m.credentials_failure("forbidden");
    let text = m.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("TYPE line");
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The identifiers in a PromQL expression that name one of our metrics.
fn our_metrics(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("ecr_pull_secrets_"))
        .map(str::to_string)
        .collect()
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn exposition_lists_every_metric_the_issue_asks_for() {
    let names = exported();
    for name in [
        "ecr_pull_secrets_token_expiry_timestamp_seconds",
        "ecr_pull_secrets_token_last_refresh_timestamp_seconds",
        "ecr_pull_secrets_aws_get_authorization_token_calls_total",
        "ecr_pull_secrets_token_refresh_failures_total",
        "ecr_pull_secrets_token_refresh_consecutive_failures",
        "ecr_pull_secrets_namespaces",
        "ecr_pull_secrets_writes_total",
        "ecr_pull_secrets_reconcile_duration_seconds_bucket",
        "ecr_pull_secrets_queue_depth",
        "ecr_pull_secrets_write_limiter_wait_seconds_bucket",
        "ecr_pull_secrets_leader",
        "ecr_pull_secrets_leadership_transitions_total",
        "ecr_pull_secrets_build_info",
        "ecr_pull_secrets_credentials_watch_failures_total",
    ] {
        assert!(names.contains(name), "{name} not exported; have {names:?}");
    }
}

#[test]
fn prometheus_rule_carries_the_rules_file_unchanged() {
    let rules = read("deploy/alerts/ecr-pull-secrets.rules.yaml");
    let groups = &rules[rules.find("groups:").expect("groups:")..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let resource = read("deploy/components/monitoring/prometheusrule.yaml");
    let spec = &resource[resource.find("spec:\n").expect("spec:") + "spec:\n".len()..];
    assert_eq!(
        spec, indented,
        "deploy/components/monitoring/prometheusrule.yaml is stale: its spec must be \
         deploy/alerts/ecr-pull-secrets.rules.yaml from `groups:` on, indented by two spaces"
    );
}

#[test]
fn helm_chart_carries_the_rules_file_unchanged() {
    assert_eq!(
        read("deploy/helm/ecr-pull-secrets/files/ecr-pull-secrets.rules.yaml"),
        read("deploy/alerts/ecr-pull-secrets.rules.yaml"),
        "the chart's copy of the alert rules is stale: copy deploy/alerts/ecr-pull-secrets.rules.yaml \
         to deploy/helm/ecr-pull-secrets/files/"
    );
}

#[test]
fn alert_rules_query_only_exported_metrics() {
    let names = exported();
    let rules = read("deploy/alerts/ecr-pull-secrets.rules.yaml");
    let mut used = 0;
    for line in rules.lines() {
        for metric in our_metrics(line) {
            used += 1;
            assert!(
                names.contains(&metric),
                "alert rules query {metric}, which the controller does not export"
            );
        }
    }
    assert!(used >= 5, "the rules should query our metrics");
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let names = exported();
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/ecr-pull-secrets.json"))
        .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut queried = BTreeSet::new();
    for panel in panels {
        let mut found = Vec::new();
        exprs(panel, &mut found);
        assert!(!found.is_empty(), "panel {} has no query", panel["title"]);
        for expr in found {
            let metrics = our_metrics(&expr);
            assert!(
                !metrics.is_empty() || expr.contains("up{job=\"ecr-pull-secrets\"}"),
                "panel {}: {expr:?} queries none of our metrics",
                panel["title"]
            );
            for metric in metrics {
                assert!(
                    names.contains(&metric),
                    "panel {}: {metric} is not exported",
                    panel["title"]
                );
                queried.insert(metric);
            }
        }
    }
    // Every family shows somewhere (histograms through any of their series).
    for name in &names {
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            queried.iter().any(|q| q.starts_with(family)),
            "the dashboard shows nothing of {name}"
        );
    }
}

#[test]
fn shipped_crd_is_the_generated_one() {
    let generated = ecr_pull_secrets::core::crd::crd_yaml();
    assert!(
        read("deploy/crd/ecrpullsecrets.yaml") == generated,
        "deploy/crd/ecrpullsecrets.yaml is stale (src/core/crd.rs changed): regenerate it with \
         `cargo run -q -- crd > deploy/crd/ecrpullsecrets.yaml`"
    );
    assert!(
        read("deploy/helm/ecr-pull-secrets/crds/ecrpullsecrets.yaml") == generated,
        "the Helm chart's copy of the CRD is stale: copy deploy/crd/ecrpullsecrets.yaml to \
         deploy/helm/ecr-pull-secrets/crds/"
    );
}

/// Every `EcrPullSecret` in deploy/examples/, with the file it is in.
fn examples() -> Vec<(String, EcrPullSecret)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let mut resources = 0;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            if value["kind"] == "EcrPullSecret" {
                let resource: EcrPullSecret =
                    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
                found.push((name.clone(), resource));
                resources += 1;
            }
        }
        assert_eq!(resources, 1, "{name}: one EcrPullSecret per example");
    }
    found
}

#[test]
fn examples_make_valid_configurations() {
    let Command::Run(base) = Cli::parse_from(["ecr-pull-secrets", "run", "--resources"]).command
    else {
        unreachable!()
    };
    let examples = examples();
    assert_eq!(examples.len(), 3, "{examples:?}");
    for (file, resource) in examples {
        // What the controller does with the spec: globs, the label selector, durations.
        if let Err(e) = resource.spec.pipeline(&file, &base.inherited()) {
            panic!("{file}: {e}");
        }
    }
}

#[test]
fn examples_readme_names_the_secrets_each_example_needs() {
    let readme = read("deploy/examples/README.md");
    for (file, resource) in examples() {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| [{file}]")))
            .unwrap_or_else(|| panic!("deploy/examples/README.md has no row for {file}"));
        let credentials = resource
            .spec
            .credentials
            .as_ref()
            .and_then(|c| c.secret_ref.as_ref())
            .map(|r| r.name.clone());
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            cells[2],
            format!("`{}`", resource.spec.secret_name),
            "{file}: the README's Secret name"
        );
        assert_eq!(
            cells[3],
            credentials
                .as_ref()
                .map_or("none".to_string(), |n| format!("`{n}`")),
            "{file}: the README's credentials Secret"
        );
        // ... and its RBAC snippets grant them: the kustomize patch (ClusterRole rule 2 is the
        // Secret rule by name, Role rule 0 the credentials rule) and the Helm values.
        let line = |prefix: &str| {
            readme
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("deploy/examples/README.md has no line {prefix:?}"))
        };
        let secret = &resource.spec.secret_name;
        assert!(
            readme.contains(&format!(
                "path: /rules/2/resourceNames/-, value: {secret} }}"
            )),
            "{file}: the README's kustomize patch does not add {secret} to the ClusterRole"
        );
        assert!(
            line("  secretNames: [").contains(secret.as_str()),
            "{file}: the README's Helm values do not list {secret}"
        );
        // ... and the admission policy's names (kustomize), which the Helm values feed too.
        assert!(
            line("      - { op: replace, path: /spec/variables/0/expression, value: ")
                .contains(&format!("'{secret}'")),
            "{file}: the README's kustomize patch does not add {secret} to the admission policy"
        );
        if let Some(credentials) = &credentials {
            assert!(
                readme.contains(&format!(
                    "path: /rules/0/resourceNames/-, value: {credentials} }}"
                )),
                "{file}: the README's kustomize patch does not add {credentials} to the Role"
            );
            assert!(
                line("  credentialsSecrets: [").contains(credentials.as_str()),
                "{file}: the README's Helm values do not list {credentials}"
            );
        }
    }
}

#[test]
fn documented_patch_paths_point_at_the_secret_rules() {
    // docs/install.md and deploy/examples/README.md add names with JSON patches on
    // /rules/2/resourceNames (ClusterRole) and /rules/0/resourceNames (Role).
    let common = read("deploy/common.yaml");
    let mut checked = 0;
    for document in serde_yaml_ng::Deserializer::from_str(&common) {
        let object = Value::deserialize(document).unwrap();
        let (index, name) = match object["kind"].as_str() {
            Some("ClusterRole") => (2, "ecr-pull-secret"),
            Some("Role") => (0, "aws-credentials"),
            _ => continue,
        };
        let rule = &object["rules"][index];
        assert_eq!(
            (
                rule["resources"][0].as_str(),
                rule["resourceNames"][0].as_str()
            ),
            (Some("secrets"), Some(name)),
            "{} rule {index} is no longer the Secret rule by name: fix the patch paths in \
             docs/install.md and deploy/examples/README.md",
            object["kind"]
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
    for doc in ["docs/install.md", "deploy/examples/README.md"] {
        let text = read(doc);
        assert!(
            text.contains("/rules/2/resourceNames/-") && text.contains("/rules/0/resourceNames/-"),
            "{doc}"
        );
    }
}

/// The documents of a multi-document YAML file of the repository.
fn documents(path: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&read(path))
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

#[test]
fn admission_policy_allows_the_cluster_roles_names_to_the_bound_service_account() {
    let common = documents("deploy/common.yaml");
    let policy_file = documents("deploy/admission-policy.yaml");
    let of_kind = |docs: &[Value], kind: &str| -> Value {
        docs.iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let policy = of_kind(&policy_file, "ValidatingAdmissionPolicy");
    let binding = of_kind(&policy_file, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    // variables[0] is the names list: docs/install.md and deploy/examples/README.md patch it
    // by that path.
    let names = &policy["spec"]["variables"][0];
    assert_eq!(
        names["name"], "names",
        "variables[0] is no longer the names list: fix the patch paths in docs/install.md and \
         deploy/examples/README.md"
    );
    let role = of_kind(&common, "ClusterRole");
    let role_names: Vec<String> = role["rules"][2]["resourceNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        support::cel_strings(names["expression"].as_str().unwrap()),
        role_names,
        "deploy/admission-policy.yaml's names must equal the ClusterRole's Secret resourceNames \
         in deploy/common.yaml"
    );
    let subject = &of_kind(&common, "ClusterRoleBinding")["subjects"][0];
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        format!(
            "request.userInfo.username == 'system:serviceaccount:{}:{}'",
            subject["namespace"].as_str().unwrap(),
            subject["name"].as_str().unwrap()
        ),
        "the policy must match the ServiceAccount the ClusterRole is bound to"
    );
    let kustomization = read("deploy/kustomization.yaml");
    assert!(
        kustomization.contains("  - admission-policy.yaml\n"),
        "the kustomize base must install the admission policy"
    );
    for doc in ["docs/install.md", "deploy/examples/README.md"] {
        assert!(
            read(doc).contains("path: /spec/variables/0/expression"),
            "{doc} should show how to extend the admission policy's names"
        );
    }
}

//! End to end: packaging (issue: packaging and least privilege). The Helm chart lints, every
//! rendering (kustomize base with the monitoring component, Helm with default values, with its
//! CRD, with resources off and with every option set) passes the API server's validation, the
//! chart exposes every flag, the rendered ClusterRoles and Roles grant exactly the least set
//! documented in docs/security.md, each rendering's admission policy allows exactly the Secret
//! names its ClusterRole grants, to exactly its ServiceAccount, every example in
//! deploy/examples/ is accepted by the installed EcrPullSecret CRD, and the chart renders for the
//! API server's own version and refuses one before 1.30 (its `kubeVersion`).
//! Run through `tests/testenv.sh run -- cargo test --test e2e_packaging -- --test-threads=1`.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

fn chart() -> String {
    repo()
        .join("deploy/helm/ecr-pull-secrets")
        .display()
        .to_string()
}

fn all_options() -> String {
    repo()
        .join("tests/helm/all-options.yaml")
        .display()
        .to_string()
}

/// Runs `program args` with `stdin`; stdout, or a panic naming the command and its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (is it on PATH? tests/testenv.sh puts it there)")
        });
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates `names` unless they exist (one server-side apply).
fn ensure_namespaces(names: &[&str]) {
    let manifests: Vec<String> = names
        .iter()
        .map(|name| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"))
        .collect();
    run(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(&manifests.join("---\n")),
    );
}

/// The Prometheus operator's CRDs (the monitoring component and the chart's ServiceMonitor and
/// PrometheusRule need them to be parsed and applied). Each test installs them, so that any one
/// of them runs alone.
fn install_prometheus_operator_crds() {
    install_crds(
        "tests/fixtures/prometheus-operator-crds.yaml",
        &[
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ],
    );
}

/// The kustomize base with the monitoring component, through a throw-away overlay.
fn kustomize_with_monitoring(dir: &Path) -> String {
    let overlay = dir.join(unique("overlay"));
    std::fs::create_dir_all(&overlay).unwrap();
    // kustomize takes directories only as relative paths: climb to / from the overlay.
    let up = "../".repeat(overlay.components().count() - 1);
    let deploy = format!(
        "{up}{}",
        repo()
            .join("deploy")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!("resources: [{deploy}]\ncomponents: [{deploy}/components/monitoring]\n"),
    )
    .unwrap();
    // kustomize refuses resources outside the overlay's root unless told otherwise.
    run(
        "kubectl",
        &[
            "kustomize",
            "--load-restrictor=LoadRestrictionsNone",
            overlay.to_str().unwrap(),
        ],
        None,
    )
}

fn helm_template(namespace: &str, values: Option<&str>) -> String {
    let chart = chart();
    let mut args = vec!["template", "ecr-pull-secrets", &chart, "-n", namespace];
    if let Some(values) = values {
        args.extend(["-f", values]);
    }
    run("helm", &args, None)
}

fn dry_run_apply(manifests: &str) -> String {
    run(
        "kubectl",
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(manifests),
    )
}

/// The rendered objects as JSON (kubectl parses the multi-document YAML for us).
fn objects(manifests: &str) -> Vec<Value> {
    let json = run(
        "kubectl",
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(manifests),
    );
    // One object alone, or a List of them.
    let value: Value = serde_json::from_str(&json).unwrap_or_else(|_| {
        // Several objects print as concatenated JSON documents.
        let items: Vec<Value> = serde_json::Deserializer::from_str(&json)
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect();
        serde_json::json!({ "kind": "List", "items": items })
    });
    match value["kind"].as_str() {
        Some("List") => value["items"].as_array().unwrap().clone(),
        _ => vec![value],
    }
}

/// One atomic permission: (scope, apiGroup, resource, resourceName or "", verb).
type Grant = (String, String, String, String, String);

fn granted(objects: &[Value]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for object in objects {
        let scope = match object["kind"].as_str() {
            Some("ClusterRole") => "cluster",
            Some("Role") => "namespace",
            _ => continue,
        };
        for rule in object["rules"].as_array().unwrap() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            let names = match list("resourceNames") {
                names if names.is_empty() => vec![String::new()],
                names => names,
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for name in &names {
                        for verb in list("verbs") {
                            grants.insert((
                                scope.to_string(),
                                group.clone(),
                                resource.clone(),
                                name.clone(),
                                verb,
                            ));
                        }
                    }
                }
            }
        }
    }
    grants
}

/// What a rendering is configured with, to pick the documented rows that apply.
struct Names<'a> {
    secret: &'a str,
    lease: &'a str,
    credentials: Option<&'a str>,
    service_accounts: bool,
    /// `--resources`: EcrPullSecret resources are served.
    resources: bool,
    /// The `spec.secretName`s of the resources, granted next to `secret`.
    resource_secrets: &'a [&'a str],
    /// Their `spec.credentials.secretRef.name`s, granted next to `credentials`.
    resource_credentials: &'a [&'a str],
}

/// The least set from the table in docs/security.md, for a configuration.
fn documented(names: &Names) -> BTreeSet<Grant> {
    let doc = std::fs::read_to_string(repo().join("docs/security.md")).unwrap();
    let table = doc
        .split("<!-- rbac-least-set:begin -->")
        .nth(1)
        .and_then(|t| t.split("<!-- rbac-least-set:end -->").next())
        .expect("the rbac-least-set table in docs/security.md");
    let mut grants = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [scope, group, resource, name, verbs, when] = cells[..] else {
            panic!("row {row:?} should have 6 cells");
        };
        // "a or b": the row applies when either does.
        let applies = when.split(" or ").any(|condition| match condition {
            "always" => true,
            "service accounts" => names.service_accounts,
            "credentials secret" => names.credentials.is_some(),
            "resources" => names.resources,
            other => panic!("unknown condition {other:?}"),
        });
        if !applies {
            continue;
        }
        let group = if group == "core" { "" } else { group };
        // Name lists grant each of their names; an empty list grants nothing.
        let resource_names: Vec<&str> = match name {
            "" => vec![""],
            "secret name" => vec![names.secret],
            "lease name" => vec![names.lease],
            "credentials secret" => vec![names.credentials.unwrap()],
            "resource secret names" => names.resource_secrets.to_vec(),
            "resource credentials secrets" => names.resource_credentials.to_vec(),
            other => panic!("unknown resourceName {other:?}"),
        };
        for name in resource_names {
            for verb in verbs.split(',').map(str::trim) {
                grants.insert((
                    scope.to_string(),
                    group.to_string(),
                    resource.to_string(),
                    name.to_string(),
                    verb.to_string(),
                ));
            }
        }
    }
    grants
}

/// What a policy enforces, without what is configured (names, adoption, the ServiceAccount) and
/// the messages (their fix names the kustomize overlay or the Helm value).
fn policy_rules(policy: &Value) -> Value {
    let spec = &policy["spec"];
    let variables: Vec<&Value> = spec["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] != "names" && v["name"] != "adoption")
        .collect();
    let validations: Vec<&Value> = spec["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["expression"])
        .collect();
    serde_json::json!({
        "failurePolicy": spec["failurePolicy"],
        "matchConstraints": spec["matchConstraints"],
        "variables": variables,
        "validations": validations,
    })
}

/// The admission policy of a rendering agrees with its RBAC: it allows exactly the Secret names
/// the ClusterRole grants by name, it matches exactly the ServiceAccount the ClusterRoleBinding
/// binds, its binding denies, and it enforces the same rules as deploy/admission-policy.yaml.
fn assert_policy_matches_rbac(what: &str, objects: &[Value]) {
    let of_kind =
        |kind: &str| -> Vec<&Value> { objects.iter().filter(|o| o["kind"] == kind).collect() };
    let [policy] = of_kind("ValidatingAdmissionPolicy")[..] else {
        panic!("{what}: expected one ValidatingAdmissionPolicy");
    };
    let [binding] = of_kind("ValidatingAdmissionPolicyBinding")[..] else {
        panic!("{what}: expected one ValidatingAdmissionPolicyBinding");
    };
    assert_eq!(
        binding["spec"]["policyName"], policy["metadata"]["name"],
        "{what}: the binding binds the policy"
    );
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"]),
        "{what}"
    );
    let names = policy["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "names")
        .and_then(|v| v["expression"].as_str())
        .unwrap_or_else(|| panic!("{what}: the policy has no names variable"));
    let by_name: BTreeSet<String> = granted(objects)
        .into_iter()
        .filter(|(scope, group, resource, name, _)| {
            scope == "cluster" && group.is_empty() && resource == "secrets" && !name.is_empty()
        })
        .map(|grant| grant.3)
        .collect();
    assert_eq!(
        cel_strings(names).into_iter().collect::<BTreeSet<_>>(),
        by_name,
        "{what}: the admission policy's names must equal the ClusterRole's Secret resourceNames"
    );
    let [role_binding] = of_kind("ClusterRoleBinding")[..] else {
        panic!("{what}: expected one ClusterRoleBinding");
    };
    let subject = &role_binding["subjects"][0];
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        format!(
            "request.userInfo.username == 'system:serviceaccount:{}:{}'",
            subject["namespace"].as_str().unwrap(),
            subject["name"].as_str().unwrap()
        ),
        "{what}: the policy matches the bound ServiceAccount"
    );
    // The file's first document is the policy, the second its binding.
    let text = std::fs::read_to_string(repo().join("deploy/admission-policy.yaml")).unwrap();
    let first = serde_yaml_ng::Deserializer::from_str(&text).next().unwrap();
    let base: Value = serde::Deserialize::deserialize(first).unwrap();
    assert_eq!(
        policy_rules(policy),
        policy_rules(&base),
        "{what}: the policy's rules differ from deploy/admission-policy.yaml"
    );
}

fn assert_least(what: &str, manifests: &str, names: &Names) {
    let objects = objects(manifests);
    assert_policy_matches_rbac(what, &objects);
    let granted = granted(&objects);
    let documented = documented(names);
    let extra: Vec<_> = granted.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: rendered RBAC differs from docs/security.md\n  granted beyond it: {extra:?}\n  missing: {missing:?}"
    );
}

/// An API server ready for the renderings' server-side dry runs: the Prometheus operator's CRDs
/// installed and the namespaces the renderings name created (server-side apply, so that any test
/// here may create them again; dry runs store nothing in them, so they are kept).
struct DryRunServer {
    env: TestEnv,
}

fn dry_run_server() -> Option<DryRunServer> {
    let env = testenv()?;
    install_prometheus_operator_crds();
    ensure_namespaces(&[
        "ecr-pull-secrets",
        "helm-default",
        "helm-all",
        "all-options-leases",
    ]);
    Some(DryRunServer { env })
}

impl DryRunServer {
    /// What a server-side dry run of `manifests` printed.
    fn apply(&self, manifests: &str) -> String {
        dry_run_apply(manifests)
    }

    /// The kustomize base with the monitoring component.
    fn kustomized(&self) -> String {
        kustomize_with_monitoring(&self.env.dir)
    }
}

/// Helm in helm-default with `args` (`--set` a value, `--include-crds`).
fn helm_with(args: &[&str]) -> String {
    let chart = chart();
    let mut all = vec!["template", "ecr-pull-secrets", &chart, "-n", "helm-default"];
    all.extend_from_slice(args);
    run("helm", &all, None)
}

/// `manifests` with each run of whitespace made one space, to match YAML across indentation.
fn words(manifests: &str) -> String {
    manifests.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn helm_lints_the_chart_with_default_values_and_with_every_option() {
    let Some(_env) = testenv() else { return };
    run("helm", &["lint", "--strict", &chart()], None);
    run(
        "helm",
        &["lint", "--strict", &chart(), "-f", &all_options()],
        None,
    );
}

#[tokio::test]
async fn the_values_schema_rejects_a_bad_value_naming_it() {
    let Some(_env) = testenv() else { return };
    let bad = Command::new("helm")
        .args(["template", "x", &chart(), "--set", "writeQps=0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("writeQps"), "{stderr}");
}

#[tokio::test]
async fn the_kustomize_base_with_monitoring_passes_server_side_dry_run() {
    let Some(server) = dry_run_server() else {
        return;
    };
    let kustomized = server.kustomized();
    server.apply(&kustomized);
    for kind in [
        "ServiceMonitor",
        "Service",
        "PrometheusRule",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(kustomized.contains(&format!("kind: {kind}\n")), "{kind}");
    }
}

#[tokio::test]
async fn helm_default_values_pass_server_side_dry_run_with_the_admission_policy() {
    let Some(server) = dry_run_server() else {
        return;
    };
    let applied = server.apply(&helm_template("helm-default", None));
    for object in [
        "validatingadmissionpolicy.admissionregistration.k8s.io/ecr-pull-secrets",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/ecr-pull-secrets",
    ] {
        assert!(
            applied.contains(object),
            "on by default: {object} not in:\n{applied}"
        );
    }
}

#[tokio::test]
async fn admission_policy_enabled_false_leaves_the_policy_out() {
    let Some(server) = dry_run_server() else {
        return;
    };
    // Rendered without the value first, so that its absence below is the value's doing.
    assert!(helm_template("helm-default", None).contains("kind: ValidatingAdmissionPolicy\n"));
    let no_policy = helm_with(&["--set", "admissionPolicy.enabled=false"]);
    server.apply(&no_policy);
    assert!(
        !no_policy.contains("ValidatingAdmissionPolicy"),
        "{no_policy}"
    );
}

#[tokio::test]
async fn resources_are_served_by_default_and_custom_resources_enabled_false_turns_them_off() {
    let Some(server) = dry_run_server() else {
        return;
    };
    assert!(
        helm_template("helm-default", None)
            .contains("- name: ECR_PULL_SECRETS_RESOURCES\n              value: \"true\"\n"),
        "resources are served by default"
    );
    let off = helm_with(&["--set", "customResources.enabled=false"]);
    server.apply(&off);
    assert!(
        off.contains("- name: ECR_PULL_SECRETS_RESOURCES\n              value: \"false\"\n"),
        "customResources.enabled=false turns --resources off"
    );
}

#[tokio::test]
async fn the_charts_crd_passes_server_side_dry_run() {
    let Some(server) = dry_run_server() else {
        return;
    };
    // `helm install` also installs the chart's crds/: the CRD passes too.
    let crds = helm_with(&["--include-crds"]);
    assert!(server.apply(&crds).contains(
        "customresourcedefinition.apiextensions.k8s.io/ecrpullsecrets.ecr-pull-secrets.io"
    ));
}

#[tokio::test]
async fn every_option_passes_server_side_dry_run_with_every_object() {
    let Some(server) = dry_run_server() else {
        return;
    };
    let applied = server.apply(&helm_template("helm-all", Some(&all_options())));
    for kind in [
        "deployment.apps/ecr-pull-secrets-all",
        "servicemonitor.monitoring.coreos.com/ecr-pull-secrets-all",
        "service/ecr-pull-secrets-all-metrics",
        "prometheusrule.monitoring.coreos.com/ecr-pull-secrets-all",
        "secret/ecr-pull-secrets-all-aws",
        "poddisruptionbudget.policy/ecr-pull-secrets-all",
        "validatingadmissionpolicy.admissionregistration.k8s.io/ecr-pull-secrets-all",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/ecr-pull-secrets-all",
    ] {
        assert!(applied.contains(kind), "{kind} not in:\n{applied}");
    }
}

#[tokio::test]
async fn allow_adoption_reaches_the_admission_policy() {
    let Some(_env) = testenv() else { return };
    let all = helm_template("helm-all", Some(&all_options()));
    assert!(
        words(&all).contains("- name: adoption expression: \"true\""),
        "{all}"
    );
    let default = helm_template("helm-default", None);
    assert!(
        words(&default).contains("- name: adoption expression: \"false\""),
        "{default}"
    );
}

#[tokio::test]
async fn the_expiring_soon_window_reaches_the_alert_rule() {
    let Some(_env) = testenv() else { return };
    assert!(
        words(&helm_template("helm-all", Some(&all_options()))).contains("- time() < 7200"),
        "the window reaches the rule"
    );
}

#[tokio::test]
async fn every_flag_of_run_is_set_from_a_value() {
    let Some(_env) = testenv() else { return };
    // Each environment variable `run` reads is rendered.
    let all = helm_template("helm-all", Some(&all_options()));
    let help = run(
        env!("CARGO_BIN_EXE_ecr-pull-secrets"),
        &["run", "--help"],
        None,
    );
    let vars: BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap())
        .collect();
    assert!(vars.len() >= 25, "{vars:?}");
    for var in vars {
        assert!(
            all.contains(&format!("- name: {var}\n")),
            "the chart does not set {var} (a flag of `run`)"
        );
    }
}

#[tokio::test]
async fn rendered_roles_equal_the_documented_least_set() {
    let Some(env) = testenv() else { return };
    install_prometheus_operator_crds();
    // The kustomize base serves resources and lists none of their names: users add them.
    let kustomize = Names {
        secret: "ecr-pull-secret",
        lease: "ecr-pull-secrets",
        credentials: Some("aws-credentials"),
        service_accounts: true,
        resources: true,
        resource_secrets: &[],
        resource_credentials: &[],
    };
    let base = run(
        "kubectl",
        &["kustomize", repo().join("deploy").to_str().unwrap()],
        None,
    );
    assert_least("kustomize base", &base, &kustomize);
    assert_least(
        "kustomize base with monitoring",
        &kustomize_with_monitoring(&env.dir),
        &kustomize,
    );
    assert_least(
        "helm, default values",
        &helm_template("helm-default", None),
        &Names {
            secret: "ecr-pull-secret",
            lease: "ecr-pull-secrets",
            credentials: None,
            service_accounts: false,
            resources: true,
            resource_secrets: &[],
            resource_credentials: &[],
        },
    );
    assert_least(
        "helm, existing credentials Secret",
        &run(
            "helm",
            &[
                "template",
                "ecr-pull-secrets",
                &chart(),
                "--set",
                "credentials.existingSecret=aws",
            ],
            None,
        ),
        &Names {
            secret: "ecr-pull-secret",
            lease: "ecr-pull-secrets",
            credentials: Some("aws"),
            service_accounts: false,
            resources: true,
            resource_secrets: &[],
            resource_credentials: &[],
        },
    );
    // Resources off: no CRD rules, no ServiceAccounts, and the resources' names are not granted
    // even when listed.
    assert_least(
        "helm, resources off",
        &run(
            "helm",
            &[
                "template",
                "ecr-pull-secrets",
                &chart(),
                "--set",
                "customResources.enabled=false",
                "--set",
                "customResources.secretNames={team-a-pull}",
                "--set",
                "customResources.credentialsSecrets={team-a-aws}",
            ],
            None,
        ),
        &Names {
            secret: "ecr-pull-secret",
            lease: "ecr-pull-secrets",
            credentials: None,
            service_accounts: false,
            resources: false,
            resource_secrets: &[],
            resource_credentials: &[],
        },
    );
    assert_least(
        "helm, every option",
        &helm_template("helm-all", Some(&all_options())),
        &Names {
            secret: "all-options-pull",
            lease: "all-options-lease",
            credentials: Some("ecr-pull-secrets-all-aws"),
            service_accounts: true,
            resources: true,
            resource_secrets: &["team-a-pull", "team-b-pull"],
            resource_credentials: &["team-a-aws"],
        },
    );
}

#[tokio::test]
async fn every_example_is_accepted_by_the_crd() {
    let Some(_env) = testenv() else { return };
    install_crd();
    // static-keys.yaml carries its credentials Secret in the controller's namespace.
    ensure_namespaces(&["ecr-pull-secrets"]);
    let mut files: Vec<_> = std::fs::read_dir(repo().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for file in &files {
        let applied = run(
            "kubectl",
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "-f",
                file.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            applied.contains("ecrpullsecret.ecr-pull-secrets.io/"),
            "{}: no EcrPullSecret applied:\n{applied}",
            file.display()
        );
    }
    // The dry run does check the CRD's schema and rules: a broken copy is refused, naming them.
    let example = std::fs::read_to_string(repo().join("deploy/examples/static-keys.yaml")).unwrap();
    for (from, to, message) in [
        (
            "secretName: team-a-pull",
            "secretName: Team_A",
            "secretName must be a DNS subdomain",
        ),
        (
            "    secretRef:",
            "    secretReference:",
            "field not declared in schema",
        ),
    ] {
        assert!(example.contains(from), "{from}");
        let mut child = Command::new("kubectl")
            .args(["apply", "--server-side", "--dry-run=server", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(example.replace(from, to).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{to:?} should be refused with {message:?}: {stderr}"
        );
    }
}

/// The chart's `kubeVersion` is the supported range's floor (docs/install.md): Helm renders it,
/// admission policy included, for this API server's own version, as `helm install` would, and
/// the server accepts that rendering; it refuses a cluster older than 1.30. Run on every
/// version of `make test-compat`.
#[tokio::test]
async fn the_chart_renders_for_this_api_servers_version_and_refuses_one_before_1_30() {
    let Some(_env) = testenv() else { return };
    let version: Value = serde_json::from_str(&run("kubectl", &["version", "-o", "json"], None))
        .expect("kubectl version -o json");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .expect("serverVersion.gitVersion")
        .to_string();
    let chart = chart();
    let rendered = run(
        "helm",
        &[
            "template",
            "ecr-pull-secrets",
            &chart,
            "-n",
            "ecr-pull-secrets",
            "--kube-version",
            &server,
        ],
        None,
    );
    assert!(
        rendered.contains("kind: ValidatingAdmissionPolicy\n"),
        "no admission policy rendered for {server}"
    );
    ensure_namespaces(&["ecr-pull-secrets"]);
    dry_run_apply(&rendered);

    let old = Command::new("helm")
        .args(["template", "x", &chart, "--kube-version", "v1.29.15"])
        .output()
        .unwrap();
    assert!(!old.status.success(), "the chart rendered for v1.29.15");
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(
        stderr.contains("kubeVersion: >=1.30.0-0"),
        "the refusal names the supported floor: {stderr}"
    );
}

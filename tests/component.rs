//! Component tests: reconcile against a scripted API server (tower-test), asserting the exact
//! requests, and that nothing is sent where nothing may be.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use ecr_pull_secrets::cli::args::{Cli, Command};
use ecr_pull_secrets::controller::pipeline::Env;
use ecr_pull_secrets::controller::reconcile::{
    self, Caches, Context, Outcome, Requests, WriteLimiter,
};
use ecr_pull_secrets::controller::supervisor::{FlagsReport, report_flags_status, serve};
use ecr_pull_secrets::core::backoff::{Exponential, Gate};
use ecr_pull_secrets::core::meta::{
    FINGERPRINT_ANNOTATION, MANAGED_LABEL, MANAGED_VALUE, OWNER_LABEL, ours,
};
use ecr_pull_secrets::core::render::{Rendered, render};
use ecr_pull_secrets::core::selection::{FLAGS, Selection};
use ecr_pull_secrets::core::service_accounts::Targets;
use ecr_pull_secrets::core::token::Token;
use ecr_pull_secrets::k8s::cleanup::remove;
use ecr_pull_secrets::k8s::events::Events;
use ecr_pull_secrets::k8s::leader::Fence;
use ecr_pull_secrets::k8s::namespaces::Namespaces;
use ecr_pull_secrets::k8s::secret_cache::{Digest, SecretCache, Table};
use ecr_pull_secrets::telemetry::metrics::Metrics;
use http::{Request, Response};
use k8s_openapi::api::core::v1::{
    LocalObjectReference, Namespace, ObjectReference, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::PartialObjectMeta;
use kube::client::Body;
use kube::core::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, Error};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, Handle};

type ApiServer = Handle<Request<Body>, Response<Body>>;

fn rendered() -> Arc<Rendered> {
    let now = SystemTime::now();
    let token = Token::private(
        "eu-west-1",
        &STANDARD.encode("AWS:pw"),
        "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        now,
        now + Duration::from_secs(3600),
    )
    .unwrap();
    Arc::new(render(&BTreeMap::from([("eu-west-1".to_string(), token)]), &[]).unwrap())
}

/// The world as the caches see it.
#[derive(Default)]
struct World {
    selection: Selection,
    desired: Option<Arc<Rendered>>,
    secrets: Vec<PartialObjectMeta<Secret>>,
    /// Whether `secrets`' versions count as verified (the start-up sweep ran).
    verified: bool,
    accounts: Option<(Targets, Vec<ServiceAccount>)>,
    fence: Option<Fence>,
}

fn verified(world: World) -> World {
    World {
        verified: true,
        ..world
    }
}

fn context(world: World) -> (Context, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    // A receiver still borrows the last value after its sender is gone.
    let (_, desired) = watch::channel(world.desired);
    let secrets = SecretCache::default();
    for secret in world.secrets {
        let verified = world.verified && ours(&secret.metadata, None);
        let namespace = secret.metadata.namespace.clone().unwrap();
        let version = Digest::of(secret.metadata.resource_version.as_deref().unwrap());
        secrets.apply_watcher_event(&watcher::Event::Apply(secret));
        // As the start-up sweep (`verify_all`) leaves it: each of our Secrets' versions verified.
        if verified {
            secrets.verified(&namespace, version, true);
        }
    }
    secrets.mark_ready();
    let service_accounts = world.accounts.map(|(targets, accounts)| {
        let (store, mut writer) = reflector::store();
        for sa in accounts {
            writer.apply_watcher_event(&watcher::Event::Apply(sa));
        }
        (targets, store)
    });
    let ctx = Context {
        client: client.clone(),
        secret_name: "ecr-pull-secret".into(),
        owner: None,
        selection: world.selection,
        desired,
        api_timeout: Duration::from_secs(5),
        secrets,
        service_accounts,
        adopt_existing: false,
        limiter: WriteLimiter::new(1000, 1000),
        requests: Requests::new(16),
        gate: Gate::new(Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }),
        fence: world.fence.unwrap_or_else(Fence::open),
        events: Events::new(client, Some("test".into())),
        metrics: Arc::new(Metrics::new()),
        caches_ready: watch::channel(Caches::Verified).1,
        in_flight: Default::default(),
    };
    (ctx, handle)
}

fn namespace(name: &str) -> PartialObjectMeta<Namespace> {
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }
}

fn cached_secret(
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> PartialObjectMeta<Secret> {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // Our label is ours when our field manager set it (server-side apply records that).
    let managed_fields = labels.iter().any(|(k, _)| *k == MANAGED_LABEL).then(|| {
        vec![ManagedFieldsEntry {
            manager: Some("ecr-pull-secrets".into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(
                json!({"f:metadata": {"f:labels": {format!("f:{MANAGED_LABEL}"): {}}}}),
            )),
            ..ManagedFieldsEntry::default()
        }]
    });
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some("ecr-pull-secret".into()),
            namespace: Some("team-a".into()),
            uid: Some("secret-uid".into()),
            resource_version: Some("7".into()),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            managed_fields,
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }
}

fn json_response(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str) -> Response<Body> {
    json_response(
        code,
        json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":reason,"code":code,"message":reason}),
    )
}

async fn body_of(request: Request<Body>) -> Value {
    serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap()
}

/// After the code under test is done (ctx dropped), the API server saw nothing more.
async fn assert_no_more_requests(ctx: Context, mut server: ApiServer) {
    drop(ctx);
    if let Some((request, _)) = server.next_request().await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

/// The fast lane runs beside the queue: a second reconcile of a namespace while the first is
/// writing it is put off, not sent (without the guard both applied: 7 writes for 5 namespaces
/// in e2e_ha).
#[tokio::test]
async fn a_namespace_is_never_reconciled_twice_at_once() {
    let (ctx, mut server) = context(World {
        desired: Some(rendered()),
        ..World::default()
    });
    let ctx = Arc::new(ctx);
    let ns = Arc::new(namespace("team-a"));
    let first = tokio::spawn(reconcile::reconcile(ns.clone(), ctx.clone()));
    // The first one is writing: its apply is at the API server, unanswered.
    let (request, send) = server.next_request().await.expect("an apply");
    assert_eq!(request.method(), "PATCH");
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile::reconcile(ns.clone(), ctx.clone()),
    )
    .await
    .expect("put off at once, not sent to the API server")
    .unwrap();
    assert_eq!(second, Action::requeue(Duration::from_millis(200)));
    let mut answer = body_of(request).await;
    answer["metadata"]["resourceVersion"] = json!("8");
    send.send_response(json_response(200, answer));
    assert_eq!(first.await.unwrap().unwrap(), Action::await_change());
    // Once it is done, the put-off one finds the namespace up to date.
    assert_eq!(
        reconcile::reconcile(ns, ctx.clone()).await.unwrap(),
        Action::await_change()
    );
    let ctx = Arc::try_unwrap(ctx).ok().expect("no reconcile left");
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn creates_the_secret_by_server_side_apply_without_reading_first() {
    let desired = rendered();
    let (ctx, mut server) = context(World {
        desired: Some(desired.clone()),
        ..World::default()
    });
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("an apply");
        assert_eq!(request.method(), "PATCH");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/team-a/secrets/ecr-pull-secret"
        );
        let query = request.uri().query().unwrap().to_string();
        assert!(query.contains("fieldManager=ecr-pull-secrets"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = body_of(request).await;
        let mut answer = body.clone();
        answer["metadata"]["resourceVersion"] = json!("8");
        send.send_response(json_response(200, answer));
        (body, server)
    });
    let outcome = ctx.reconcile_namespace(&namespace("team-a")).await.unwrap();
    assert_eq!(outcome, Outcome::Written);
    let (body, server) = api.await.unwrap();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(body["metadata"]["labels"][MANAGED_LABEL], MANAGED_VALUE);
    assert_eq!(
        body["metadata"]["annotations"][FINGERPRINT_ANNOTATION],
        desired.fingerprint.as_str()
    );
    let config = STANDARD
        .decode(body["data"][".dockerconfigjson"].as_str().unwrap())
        .unwrap();
    assert_eq!(config, desired.config);
    let cached = ctx.secrets.get("team-a").unwrap();
    assert_eq!(cached.version, Some(Digest::of("8")));
    assert!(ctx.secrets.trusted("team-a", &cached));
    // A second trigger before the cache shows our write does not write again.
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::UpToDate
    );
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn a_foreign_secret_is_left_alone_and_reported_once() {
    let (ctx, mut server) = context(World {
        desired: Some(rendered()),
        secrets: vec![cached_secret(&[("team", "a")], &[])],
        ..World::default()
    });
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("an Event");
        assert_eq!(request.method(), "POST");
        assert_eq!(
            request.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/team-a/events"
        );
        let body = body_of(request).await;
        send.send_response(json_response(201, body.clone()));
        (body, server)
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Conflict
    );
    let (event, server) = api.await.unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "SecretConflict");
    assert_eq!(event["regarding"]["kind"], "Namespace");
    assert!(event["note"].as_str().unwrap().contains("--adopt-existing"));
    // A second reconcile in the same window publishes nothing and writes nothing.
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Conflict
    );
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn an_unchanged_secret_costs_no_request() {
    let desired = rendered();
    let (ctx, server) = context(verified(World {
        desired: Some(desired.clone()),
        secrets: vec![cached_secret(
            &[(MANAGED_LABEL, MANAGED_VALUE)],
            &[(FINGERPRINT_ANNOTATION, &desired.fingerprint)],
        )],
        ..World::default()
    }));
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::UpToDate
    );
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn data_edited_by_another_field_manager_is_restored() {
    let desired = rendered();
    let mut edited = cached_secret(
        &[(MANAGED_LABEL, MANAGED_VALUE)],
        &[(FINGERPRINT_ANNOTATION, &desired.fingerprint)],
    );
    edited
        .metadata
        .managed_fields
        .as_mut()
        .unwrap()
        .push(ManagedFieldsEntry {
            manager: Some("kubectl-edit".into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(json!({"f:data": {"f:.dockerconfigjson": {}}}))),
            ..ManagedFieldsEntry::default()
        });
    let (ctx, mut server) = context(verified(World {
        desired: Some(desired),
        secrets: vec![edited],
        ..World::default()
    }));
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("a restoring apply");
        assert_eq!(request.method(), "PATCH");
        let body = body_of(request).await;
        send.send_response(json_response(200, body));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Written
    );
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;
}

/// The API server's answer to a metadata-only read of `secret`.
fn metadata_answer(secret: PartialObjectMeta<Secret>) -> serde_json::Value {
    let mut answer = serde_json::to_value(secret).unwrap();
    answer["apiVersion"] = json!("meta.k8s.io/v1");
    answer["kind"] = json!("PartialObjectMetadata");
    answer
}

/// team-a excluded, with `secret` in it.
fn excluded_with(secret: PartialObjectMeta<Secret>) -> (Context, ApiServer) {
    context(World {
        selection: Selection::new(&FLAGS, &[], &["team-a".to_string()], None).unwrap(),
        desired: Some(rendered()),
        secrets: vec![secret],
        ..World::default()
    })
}

#[tokio::test]
async fn leaving_the_selection_deletes_only_our_secret_with_a_uid_precondition() {
    let (ctx, mut server) = excluded_with(cached_secret(&[(MANAGED_LABEL, MANAGED_VALUE)], &[]));
    let api = tokio::spawn(async move {
        // The cache keeps no UID: the Secret's metadata is read, and checked to be ours.
        let (request, send) = server.next_request().await.expect("a read");
        assert_eq!(request.method(), "GET");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/team-a/secrets/ecr-pull-secret"
        );
        let mut current = cached_secret(&[(MANAGED_LABEL, MANAGED_VALUE)], &[]);
        current.metadata.uid = Some("current-uid".into());
        send.send_response(json_response(200, metadata_answer(current)));
        let (request, send) = server.next_request().await.expect("a delete");
        assert_eq!(request.method(), "DELETE");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/team-a/secrets/ecr-pull-secret"
        );
        let body = body_of(request).await;
        assert_eq!(body["preconditions"]["uid"], "current-uid");
        send.send_response(json_response(
            200,
            json!({"kind":"Status","apiVersion":"v1","status":"Success"}),
        ));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Removed
    );
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;

    // A foreign Secret in an excluded namespace is not ours to delete.
    let (ctx, server) = excluded_with(cached_secret(&[], &[]));
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::NotSelected
    );
    assert_no_more_requests(ctx, server).await;

    // Ours in the cache, but replaced by someone else's since: read, and left alone.
    let (ctx, mut server) = excluded_with(cached_secret(&[(MANAGED_LABEL, MANAGED_VALUE)], &[]));
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("a read");
        assert_eq!(request.method(), "GET");
        send.send_response(json_response(200, metadata_answer(cached_secret(&[], &[]))));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::NotSelected
    );
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn excluded_terminating_and_tokenless_namespaces_cost_no_request() {
    let excluded = Selection::new(&FLAGS, &[], &["team-a".to_string()], None).unwrap();
    let (ctx, server) = context(World {
        selection: excluded,
        desired: Some(rendered()),
        ..World::default()
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::NotSelected
    );
    let mut terminating = namespace("team-b");
    terminating.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    assert_eq!(
        ctx.reconcile_namespace(&terminating).await.unwrap(),
        Outcome::NotSelected
    );
    assert_no_more_requests(ctx, server).await;

    let (ctx, server) = context(World::default());
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::NoTokenYet
    );
    assert_no_more_requests(ctx, server).await;
}

fn service_account(name: &str, rv: &str, pull_secrets: &[&str]) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("team-a".into()),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        },
        image_pull_secrets: Some(
            pull_secrets
                .iter()
                .map(|n| LocalObjectReference {
                    name: n.to_string(),
                })
                .collect(),
        ),
        ..ServiceAccount::default()
    }
}

#[tokio::test]
async fn service_account_patch_keeps_other_entries_and_retries_on_conflict() {
    let desired = rendered();
    let (ctx, mut server) = context(verified(World {
        desired: Some(desired.clone()),
        secrets: vec![cached_secret(
            &[(MANAGED_LABEL, MANAGED_VALUE)],
            &[(FINGERPRINT_ANNOTATION, &desired.fingerprint)],
        )],
        accounts: Some((
            "default".parse().unwrap(),
            vec![
                service_account("default", "10", &["a", "b"]),
                service_account("builder", "11", &[]),
            ],
        )),
        ..World::default()
    }));
    let api = tokio::spawn(async move {
        // First try, from the cache: someone else wrote in between.
        let (request, send) = server.next_request().await.expect("a patch");
        assert_eq!(request.method(), "PATCH");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/team-a/serviceaccounts/default"
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        let body = body_of(request).await;
        assert_eq!(body["metadata"]["resourceVersion"], "10");
        assert_eq!(
            body["imagePullSecrets"],
            json!([{"name":"a"},{"name":"b"},{"name":"ecr-pull-secret"}])
        );
        send.send_response(status(409, "Conflict"));
        // Re-read, then patch the fresh list: the other writer's entry "c" survives.
        let (request, send) = server.next_request().await.expect("a re-read");
        assert_eq!(request.method(), "GET");
        let fresh =
            serde_json::to_value(service_account("default", "12", &["a", "b", "c"])).unwrap();
        send.send_response(json_response(200, fresh));
        let (request, send) = server.next_request().await.expect("a second patch");
        let body = body_of(request).await;
        assert_eq!(body["metadata"]["resourceVersion"], "12");
        assert_eq!(
            body["imagePullSecrets"],
            json!([{"name":"a"},{"name":"b"},{"name":"c"},{"name":"ecr-pull-secret"}])
        );
        send.send_response(json_response(200, body));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::UpToDate
    );
    let server = api.await.unwrap();
    // "builder" is not a target and was not touched.
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_api_server_times_out() {
    let (ctx, mut server) = context(World {
        desired: Some(rendered()),
        ..World::default()
    });
    let api = tokio::spawn(async move {
        // Take the request and never answer it.
        let pending = server.next_request().await;
        futures::future::pending::<()>().await;
        drop(pending);
    });
    let err = ctx
        .reconcile_namespace(&namespace("team-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ecr_pull_secrets::Error::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("team-a/ecr-pull-secret"), "{err}");
    api.abort();
}

#[tokio::test]
async fn api_errors_carry_context() {
    let (ctx, mut server) = context(World {
        desired: Some(rendered()),
        ..World::default()
    });
    tokio::spawn(async move {
        let (_, send) = server.next_request().await.unwrap();
        send.send_response(status(403, "Forbidden"));
    });
    let err = ctx
        .reconcile_namespace(&namespace("team-a"))
        .await
        .unwrap_err();
    assert!(
        err.is_forbidden()
            && matches!(err, ecr_pull_secrets::Error::Kube { source: Error::Api(ref s), .. } if s.code == 403),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("write Secret team-a/ecr-pull-secret"),
        "{err}"
    );
}

/// The full Secret as the API server returns it, with `config` as its data.
fn full_secret(fingerprint: &str, config: &[u8], resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": "ecr-pull-secret", "namespace": "team-a", "uid": "secret-uid",
            "resourceVersion": resource_version,
            "labels": {MANAGED_LABEL: MANAGED_VALUE},
            "annotations": {FINGERPRINT_ANNOTATION: fingerprint},
        },
        "data": {".dockerconfigjson": STANDARD.encode(config)},
    })
}

#[tokio::test]
async fn a_version_we_neither_wrote_nor_verified_is_read_before_it_is_trusted() {
    let desired = rendered();
    let ours = || {
        cached_secret(
            &[(MANAGED_LABEL, MANAGED_VALUE)],
            &[(FINGERPRINT_ANNOTATION, &desired.fingerprint)],
        )
    };
    // Intact: one read, then trusted without another.
    let (ctx, mut server) = context(World {
        desired: Some(desired.clone()),
        secrets: vec![ours()],
        ..World::default()
    });
    let answer = full_secret(&desired.fingerprint, &desired.config, "7");
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("a read");
        assert_eq!(request.method(), "GET");
        send.send_response(json_response(200, answer));
        server
    });
    for _ in 0..2 {
        assert_eq!(
            ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
            Outcome::UpToDate
        );
    }
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;

    // Forged: our label, our field manager and our fingerprint copied onto other data (a
    // Secret deleted and recreated by someone who may create Secrets there): restored.
    let (ctx, mut server) = context(World {
        desired: Some(desired.clone()),
        secrets: vec![ours()],
        ..World::default()
    });
    let forged = full_secret(&desired.fingerprint, br#"{"auths":{}}"#, "7");
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("a read");
        assert_eq!(request.method(), "GET");
        send.send_response(json_response(200, forged));
        let (request, send) = server.next_request().await.expect("a restoring apply");
        assert_eq!(request.method(), "PATCH");
        let body = body_of(request).await;
        send.send_response(json_response(200, body));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Written
    );
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn our_label_set_by_someone_else_does_not_make_a_secret_ours() {
    let desired = rendered();
    let mut copied = cached_secret(
        &[(MANAGED_LABEL, MANAGED_VALUE)],
        &[(FINGERPRINT_ANNOTATION, &desired.fingerprint)],
    );
    copied.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kubectl-create".into()),
        operation: Some("Update".into()),
        fields_v1: Some(FieldsV1(
            json!({"f:metadata": {"f:labels": {format!("f:{MANAGED_LABEL}"): {}}}}),
        )),
        ..ManagedFieldsEntry::default()
    }]);
    // Selected: a conflict (one Event), never overwritten.
    let (ctx, mut server) = context(verified(World {
        desired: Some(desired.clone()),
        secrets: vec![copied.clone()],
        ..World::default()
    }));
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("an Event");
        assert_eq!(request.method(), "POST");
        let body = body_of(request).await;
        assert_eq!(body["reason"], "SecretConflict");
        send.send_response(json_response(201, body));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Conflict
    );
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;
    // Opted out or excluded: never deleted.
    let (ctx, server) = context(World {
        selection: Selection::new(&FLAGS, &[], &["team-a".to_string()], None).unwrap(),
        desired: Some(desired),
        secrets: vec![copied],
        ..World::default()
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::NotSelected
    );
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn a_closed_fence_sends_no_write() {
    // Never renewed (or renewed longer ago than the renew deadline): closed.
    let (ctx, server) = context(World {
        desired: Some(rendered()),
        fence: Some(Fence::new(Duration::from_secs(10))),
        ..World::default()
    });
    let err = ctx
        .reconcile_namespace(&namespace("team-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ecr_pull_secrets::Error::LostLeadership(_)),
        "{err}"
    );
    assert_no_more_requests(ctx, server).await;
}

#[tokio::test]
async fn an_expired_token_is_written_and_reported_as_expired() {
    let fetched = SystemTime::now() - Duration::from_secs(7200);
    let token = Token::private(
        "eu-west-1",
        &STANDARD.encode("AWS:pw"),
        "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        fetched,
        fetched + Duration::from_secs(3600),
    )
    .unwrap();
    let expired =
        Arc::new(render(&BTreeMap::from([("eu-west-1".to_string(), token)]), &[]).unwrap());
    let (ctx, mut server) = context(World {
        desired: Some(expired),
        ..World::default()
    });
    let api = tokio::spawn(async move {
        let (request, send) = server.next_request().await.expect("an apply");
        assert_eq!(request.method(), "PATCH");
        let body = body_of(request).await;
        send.send_response(json_response(200, body));
        let (request, send) = server.next_request().await.expect("an Event");
        let body = body_of(request).await;
        assert_eq!(body["reason"], "TokenExpired");
        assert_eq!(body["type"], "Warning");
        send.send_response(json_response(201, body));
        server
    });
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::Expired
    );
    let server = api.await.unwrap();
    assert_no_more_requests(ctx, server).await;
}

/// The credentials Secret's watch against an API server that refuses it: LISTs stay few (the
/// watch backs off), every failure counts, the problem names the verb and clears once allowed.
#[tokio::test(start_paused = true)]
async fn a_refused_credentials_watch_backs_off_and_says_which_verb() {
    use ecr_pull_secrets::aws::credentials::SecretCredentials;

    #[derive(Default)]
    struct Seen {
        lists: u32,
        watches: u32,
        /// Refuse the list (`"list"`), only the watch (`"watch"`), or nothing (`""`).
        refuse: &'static str,
        /// Requests held unanswered: the cap was reached, or a watch that stays open.
        held: Vec<tower_test::mock::SendResponse<Response<Body>>>,
    }
    // A watch without backoff reaches this at once; then nothing is answered, so the test
    // ends at its deadline and fails on the count instead of spinning forever.
    const CAP: u32 = 500;
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Seen {
        refuse: "list",
        ..Seen::default()
    }));
    let api = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some((request, send)) = server.next_request().await {
                assert_eq!(request.method(), "GET");
                assert_eq!(request.uri().path(), "/api/v1/namespaces/ns/secrets");
                let query = request.uri().query().unwrap_or_default().to_string();
                assert!(
                    query.contains("fieldSelector=metadata.name%3Daws"),
                    "{query}"
                );
                let mut seen = seen.lock().unwrap();
                let watch = query.contains("watch=true");
                if watch {
                    seen.watches += 1;
                } else {
                    seen.lists += 1;
                }
                if seen.lists + seen.watches > CAP {
                    seen.held.push(send);
                } else if seen.refuse == "list" || (watch && seen.refuse == "watch") {
                    send.send_response(status(403, "Forbidden"));
                } else if watch {
                    seen.held.push(send);
                } else {
                    let secret = json!({
                        "metadata": {"name": "aws", "namespace": "ns", "resourceVersion": "5"},
                        "data": {
                            "aws_access_key_id": STANDARD.encode("AKIAIOSFODNN7EXAMPLE"),
                            "aws_secret_access_key": STANDARD.encode("wJalrXUtnFEMI/K7MDENG"),
                        },
                    });
                    send.send_response(json_response(
                        200,
                        json!({"kind": "SecretList", "apiVersion": "v1",
                               "metadata": {"resourceVersion": "5"}, "items": [secret]}),
                    ));
                }
            }
        }
    });
    let metrics = Arc::new(Metrics::new());
    let keys = SecretCredentials::new(aws_credential_types::Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "secret",
        None,
        None,
        "test",
    ));
    let follow = tokio::spawn(keys.follow(client, "ns".into(), "aws".into(), metrics.clone()));
    let failures = |metrics: &Metrics| {
        let text = metrics.encode();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "ecr_pull_secrets_credentials_watch_failures_total{reason=\"forbidden\"} ",
                )
            })
            .map_or(0, |v| v.parse::<u32>().unwrap())
    };

    // A minute of (paused) time with the list refused: kube's default backoff, 0.8 s doubling
    // to 30 s with jitter, allows at most 7 attempts. Without backoff: the cap, at once.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let lists = seen.lock().unwrap().lists;
    assert!((3..=7).contains(&lists), "{lists} LISTs in a minute");
    assert_eq!(failures(&metrics), lists, "every failure counts");
    let problem = metrics.observed().current_problem().expect("a problem");
    assert_eq!(problem.reason, "Forbidden");
    assert!(
        problem
            .message
            .contains("not allowed to list credentials Secret ns/aws"),
        "{}",
        problem.message
    );

    // Listing allowed, watching not: the LIST is not repeated, the WATCH backs off.
    seen.lock().unwrap().refuse = "watch";
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (lists_after, watches) = {
        let seen = seen.lock().unwrap();
        (seen.lists, seen.watches)
    };
    assert_eq!(lists_after, lists + 1, "listed once");
    assert!((2..=7).contains(&watches), "{watches} WATCHes in a minute");
    let problem = metrics.observed().current_problem().expect("a problem");
    assert!(
        problem
            .message
            .contains("not allowed to watch credentials Secret ns/aws"),
        "{}",
        problem.message
    );

    // Allowed: the next watch stays open and the problem clears; progress elsewhere (a token
    // fetched) never hid it.
    metrics.token_fetched("eu-west-1", SystemTime::now() + Duration::from_secs(3600));
    seen.lock().unwrap().refuse = "";
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while metrics.observed().current_problem().is_some() {
        assert!(
            tokio::time::Instant::now() < until,
            "the problem never cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follow.abort();
    api.abort();
}

/// Every watch in src/ backs off: a watch that retries at once floods the API server and the
/// log (the credentials watch did, 4,800 LISTs a second). `Controller::new` is exempt: it backs
/// off its own watch (`trigger_backoff`, kube's default).
#[test]
fn every_watch_in_src_backs_off() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut watches = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for (at, _) in text.match_indices("watcher(") {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line = &text[line_start..];
            if line.trim_start().starts_with("//") || text[..at].ends_with("fn ") {
                continue;
            }
            // The chain the call starts: up to the end of its statement.
            let chain = &text[at..];
            let chain = &chain[..chain.find(";\n").unwrap_or(chain.len())];
            assert!(
                chain.contains(".default_backoff()") || chain.contains(".backoff("),
                "{}: a watcher without backoff: {}",
                path.display(),
                &chain[..chain.len().min(200)]
            );
            watches += 1;
        }
    }
    assert!(
        watches >= 5,
        "found only {watches} watches; did the scan break?"
    );
}

/// A Secret named `ecr-pull-secret` in `namespace` with our label; ours when `by_us` (our field
/// manager set the label), else a copy of the label by kubectl.
fn labelled_secret(namespace: &str, by_us: bool) -> Value {
    let manager = if by_us {
        "ecr-pull-secrets"
    } else {
        "kubectl-create"
    };
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": "ecr-pull-secret",
            "namespace": namespace,
            "uid": format!("uid-{namespace}"),
            "resourceVersion": "5",
            "labels": {MANAGED_LABEL: MANAGED_VALUE, OWNER_LABEL: "team"},
            "managedFields": [{
                "manager": manager,
                "operation": "Apply",
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {format!("f:{MANAGED_LABEL}"): {}}}}
            }]
        }
    })
}

fn metadata_list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "9"},
        "items": items
    })
}

#[tokio::test]
async fn cleanup_deletes_only_secrets_our_field_manager_labelled_each_with_its_uid() {
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let fence = Fence::open();
    let removal = tokio::spawn({
        let fence = fence.clone();
        async move {
            remove(
                &client,
                "ecr-pull-secret",
                Some("team"),
                false,
                Duration::from_secs(5),
                false,
                &fence,
            )
            .await
        }
    });
    let (request, send) = server.next_request().await.expect("the list");
    let uri = request.uri().to_string();
    assert_eq!(request.method(), "GET", "{uri}");
    // Our name, our managed label and this resource's owner label: nothing else is listed.
    for part in [
        "fieldSelector=metadata.name%3Decr-pull-secret",
        "ecr-pull-secrets.io%2Fowner%3Dteam",
        "app.kubernetes.io%2Fmanaged-by%3Decr-pull-secrets",
    ] {
        assert!(uri.contains(part), "{uri} lacks {part}");
    }
    send.send_response(json_response(
        200,
        metadata_list(vec![
            labelled_secret("a", true),
            labelled_secret("copied", false),
            labelled_secret("gone", true),
        ]),
    ));
    for (namespace, answer) in [("a", 200), ("gone", 404)] {
        let (request, send) = server.next_request().await.expect("a delete");
        assert_eq!(request.method(), "DELETE");
        assert_eq!(
            request.uri().path(),
            format!("/api/v1/namespaces/{namespace}/secrets/ecr-pull-secret")
        );
        let body = body_of(request).await;
        assert_eq!(
            body["preconditions"]["uid"],
            format!("uid-{namespace}"),
            "{body}"
        );
        send.send_response(if answer == 200 {
            json_response(
                200,
                json!({"kind":"Status","apiVersion":"v1","status":"Success"}),
            )
        } else {
            status(404, "NotFound")
        });
    }
    let report = removal.await.unwrap().expect("removed");
    assert_eq!(
        report.secrets,
        ["a/ecr-pull-secret", "gone/ecr-pull-secret"]
    );
    // The Secret whose label kubectl copied was never sent a delete.
    assert!(server.next_request().await.is_none(), "no more requests");
}

#[tokio::test]
async fn cleanup_behind_a_closed_fence_deletes_nothing() {
    let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let fence = Fence::new(Duration::from_secs(10));
    let removal = tokio::spawn(async move {
        remove(
            &client,
            "ecr-pull-secret",
            None,
            false,
            Duration::from_secs(5),
            false,
            &fence,
        )
        .await
    });
    let (_, send) = server.next_request().await.expect("the list");
    send.send_response(json_response(
        200,
        metadata_list(vec![labelled_secret("a", true)]),
    ));
    let error = removal
        .await
        .unwrap()
        .expect_err("a never-renewed fence refuses");
    assert!(
        matches!(error, ecr_pull_secrets::Error::LostLeadership(_)),
        "{error}"
    );
    assert!(server.next_request().await.is_none(), "no delete sent");
}

/// What the supervisor's tasks share, on a scripted API server; its namespace watch is never
/// started, so only the requests under test reach the server.
fn supervisor_env() -> (Env, Arc<Metrics>, ApiServer) {
    let (service, server) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::new());
    let (namespaces, _watch) = Namespaces::watch(client.clone(), false, |_| {});
    let env = Env {
        client,
        metrics: metrics.clone(),
        fence: Fence::open(),
        api_timeout: Duration::from_secs(5),
        concurrency: 1,
        requests: Requests::new(1),
        table: Table::default(),
        namespace: "ecr".into(),
        identity: Some("replica-a".into()),
        namespaces,
    };
    (env, metrics, server)
}

/// The flag-configured pipeline's Ready verdict goes where a resource's would: a metric, a
/// published status (the annotation the elector writes on the Lease), and an Event per change.
#[tokio::test(start_paused = true)]
async fn the_flag_configured_verdict_is_a_metric_a_published_status_and_an_event_per_change() {
    let (env, metrics, mut server) = supervisor_env();
    let lease = ObjectReference {
        api_version: Some("coordination.k8s.io/v1".into()),
        kind: Some("Lease".into()),
        name: Some("ecr-pull-secrets".into()),
        namespace: Some("ecr".into()),
        ..ObjectReference::default()
    };
    metrics.problem(
        "CredentialsUnavailable",
        "the credentials Secret ecr/aws does not exist".into(),
    );
    let (ready, mut published) = tokio::sync::watch::channel(None);
    let _reporter = tokio::spawn(report_flags_status(
        env,
        FlagsReport { lease, ready },
        "ecr-pull-secret".into(),
    ));
    let ready_metric = |metrics: &Metrics| {
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("ecr_pull_secrets_resource_ready{resource=\"(flags)\"} "))
            .map(str::to_string)
    };
    let mut next_published = async move || -> serde_json::Value {
        published.changed().await.expect("the reporter publishes");
        let value = published.borrow_and_update().clone().expect("a verdict");
        serde_json::from_str(&value).expect("JSON")
    };
    let mut next_event = async || {
        let (request, send) = server.next_request().await.expect("an Event");
        assert_eq!(request.method(), "POST");
        assert_eq!(
            request.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/ecr/events"
        );
        let body = body_of(request).await;
        send.send_response(json_response(201, body.clone()));
        body
    };
    let degraded = next_event().await;
    let verdict = next_published().await;
    assert_eq!(verdict["secretName"], "ecr-pull-secret");
    assert_eq!(verdict["status"], "False");
    assert_eq!(verdict["reason"], "CredentialsUnavailable", "{verdict}");
    assert_eq!(ready_metric(&metrics).as_deref(), Some("0"));
    assert_eq!(degraded["reason"], "CredentialsUnavailable", "{degraded}");
    assert_eq!(degraded["type"], "Warning");
    assert_eq!(degraded["regarding"]["kind"], "Lease");
    assert_eq!(degraded["regarding"]["name"], "ecr-pull-secrets");
    assert!(
        degraded["note"]
            .as_str()
            .unwrap()
            .contains("ecr/aws does not exist"),
        "{degraded}"
    );
    // Fixed: a token and a synced namespace; the next verdict is Synced, a Normal Event.
    metrics.token_fetched("us-east-1", SystemTime::now() + Duration::from_secs(43_200));
    metrics.namespace_moved(None, Some("synced"));
    let synced = next_event().await;
    assert_eq!(synced["reason"], "Synced", "{synced}");
    assert_eq!(synced["type"], "Normal");
    let verdict = next_published().await;
    assert_eq!(
        (&verdict["status"], &verdict["reason"]),
        (&"True".into(), &"Synced".into()),
        "{verdict}"
    );
    assert_eq!(ready_metric(&metrics).as_deref(), Some("1"));
    // Nothing changes: no more Events, however long it runs.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), server.next_request())
            .await
            .is_err(),
        "an Event without a change"
    );
}

/// The supervisor's uniqueness rule: of two EcrPullSecrets naming one Secret, the younger is
/// not served and its status names the older, which keeps the name even while it cannot run
/// itself (here: an invalid spec, so no pipeline starts and nothing calls AWS).
#[tokio::test]
async fn the_younger_of_two_resources_naming_one_secret_is_blocked_naming_the_older() {
    let (env, metrics, mut server) = supervisor_env();
    let Command::Run(args) =
        Cli::try_parse_from(["ecr-pull-secrets", "run", "--region", "us-east-1"])
            .unwrap()
            .command
    else {
        panic!("not run")
    };
    let resource = |name: &str, created: &str, include: &str| {
        json!({
            "apiVersion": "ecr-pull-secrets.io/v1alpha1",
            "kind": "EcrPullSecret",
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "generation": 1,
                "resourceVersion": "7", "creationTimestamp": created,
                "finalizers": ["ecr-pull-secrets.io/cleanup"],
            },
            "spec": {
                "secretName": "shared",
                "registries": [{"host": "123456789012.dkr.ecr.us-east-1.amazonaws.com"}],
                "namespaces": {"include": [include]},
                // Were a pipeline started by mistake, its first request would be for these
                // keys, from this scripted API server: never a call to AWS.
                "credentials": {"secretRef": {"name": "aws"}},
            },
        })
    };
    let older = resource("alpha", "2026-11-30T10:00:00Z", "Team_A");
    let younger = resource("beta", "2026-11-30T11:00:00Z", "team-*");
    let (stop_tx, stop) = watch::channel(false);
    let (ready, _) = watch::channel(None);
    let report = FlagsReport {
        lease: ObjectReference::default(),
        ready,
    };
    let served = tokio::spawn(serve(env, args.inherited(), None, true, report, stop));

    let mut statuses = BTreeMap::new();
    let mut watches = Vec::new();
    while statuses.len() < 2 {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), server.next_request())
            .await
            .expect("a request within 10 s")
            .expect("a request");
        let (method, path) = (request.method().clone(), request.uri().path().to_string());
        let query = request.uri().query().unwrap_or_default().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/apis/ecr-pull-secrets.io/v1alpha1/ecrpullsecrets")
                if query.contains("watch") =>
            {
                // Held open: nothing changes.
                watches.push(send);
            }
            ("GET", "/apis/ecr-pull-secrets.io/v1alpha1/ecrpullsecrets") => {
                send.send_response(json_response(
                    200,
                    json!({
                        "apiVersion": "ecr-pull-secrets.io/v1alpha1",
                        "kind": "EcrPullSecretList",
                        "metadata": {"resourceVersion": "7"},
                        "items": [older, younger],
                    }),
                ));
            }
            ("PATCH", status) if status.ends_with("/status") => {
                let name = status.split('/').nth_back(1).unwrap().to_string();
                let body = body_of(request).await;
                let mut object = if name == "alpha" {
                    older.clone()
                } else {
                    younger.clone()
                };
                object["status"] = body["status"].clone();
                send.send_response(json_response(200, object));
                statuses.insert(name, body["status"].clone());
            }
            _ => panic!("unexpected request {method} {path}?{query}"),
        }
    }
    let ready = |name: &str| {
        let status = &statuses[name];
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap_or_else(|| panic!("no Ready condition: {status}"));
        (
            ready["status"].as_str().unwrap().to_string(),
            ready["reason"].as_str().unwrap().to_string(),
            ready["message"].as_str().unwrap().to_string(),
        )
    };
    let (status, reason, message) = ready("beta");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNameInUse")
    );
    assert!(
        message.contains("EcrPullSecret alpha already writes Secret shared"),
        "{message}"
    );
    let (status, reason, message) = ready("alpha");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("Team_A"), "{message}");
    let text = metrics.encode();
    for name in ["alpha", "beta"] {
        assert!(
            text.contains(&format!(
                "ecr_pull_secrets_resource_ready{{resource=\"{name}\"}} 0"
            )),
            "{text}"
        );
    }
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
    drop(watches);
}

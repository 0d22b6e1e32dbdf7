//! Component tests: reconcile against a scripted API server (tower-test), asserting the exact
//! requests, and that nothing is written where nothing may be.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ecr_pull_secrets::reconcile::{Context, FINGERPRINT_ANNOTATION, MANAGED_LABEL, Outcome};
use ecr_pull_secrets::render::{Rendered, render};
use ecr_pull_secrets::selection::Selection;
use ecr_pull_secrets::token::Token;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::client::Body;
use kube::core::ObjectMeta;
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

fn context(selection: Selection, desired: Option<Arc<Rendered>>) -> (Context, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    // A receiver still borrows the last value after its sender is gone.
    let (_, rx) = watch::channel(desired);
    let ctx = Context {
        client: Client::new(service, "default"),
        secret_name: "ecr-pull-secret".into(),
        selection,
        desired: rx,
        api_timeout: Duration::from_secs(5),
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

fn json_response(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    json_response(
        404,
        json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}),
    )
}

fn secret_meta(labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "ecr-pull-secret", "namespace": "team-a", "labels": labels, "annotations": annotations}
    })
}

async fn expect_metadata_get(server: &mut ApiServer, answer: Response<Body>) {
    let (request, send) = server
        .next_request()
        .await
        .expect("a GET of the Secret's metadata");
    assert_eq!(request.method(), "GET");
    assert_eq!(
        request.uri().path(),
        "/api/v1/namespaces/team-a/secrets/ecr-pull-secret"
    );
    let accept = request.headers()["accept"].to_str().unwrap();
    assert!(
        accept.contains("as=PartialObjectMetadata"),
        "metadata-only read, got {accept}"
    );
    send.send_response(answer);
}

#[tokio::test]
async fn creates_the_secret_by_server_side_apply() {
    let desired = rendered();
    let (ctx, mut server) = context(Selection::default(), Some(desired.clone()));
    let api = tokio::spawn(async move {
        expect_metadata_get(&mut server, not_found()).await;
        let (request, send) = server.next_request().await.expect("an apply");
        assert_eq!(request.method(), "PATCH");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/team-a/secrets/ecr-pull-secret"
        );
        let query = request.uri().query().unwrap();
        assert!(query.contains("fieldManager=ecr-pull-secrets"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        send.send_response(json_response(200, body.clone()));
        body
    });
    let outcome = ctx.reconcile_namespace(&namespace("team-a")).await.unwrap();
    assert_eq!(outcome, Outcome::Written);
    let body = api.await.unwrap();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        body["metadata"]["labels"][MANAGED_LABEL],
        "ecr-pull-secrets"
    );
    assert_eq!(
        body["metadata"]["annotations"][FINGERPRINT_ANNOTATION],
        desired.fingerprint.as_str()
    );
    let config = STANDARD
        .decode(body["data"][".dockerconfigjson"].as_str().unwrap())
        .unwrap();
    assert_eq!(config, desired.config);
}

#[tokio::test]
async fn leaves_a_foreign_secret_alone() {
    let (ctx, mut server) = context(Selection::default(), Some(rendered()));
    let api = tokio::spawn(async move {
        expect_metadata_get(
            &mut server,
            json_response(200, secret_meta(json!({"team": "a"}), json!({}))),
        )
        .await;
        server
    });
    let outcome = ctx.reconcile_namespace(&namespace("team-a")).await.unwrap();
    assert_eq!(outcome, Outcome::Conflict);
    let mut server = api.await.unwrap();
    drop(ctx);
    assert!(
        server.next_request().await.is_none(),
        "no write after a conflict"
    );
}

#[tokio::test]
async fn skips_an_unchanged_secret() {
    let desired = rendered();
    let (ctx, mut server) = context(Selection::default(), Some(desired.clone()));
    let fingerprint = desired.fingerprint.clone();
    let api = tokio::spawn(async move {
        let meta = secret_meta(
            json!({MANAGED_LABEL: "ecr-pull-secrets"}),
            json!({FINGERPRINT_ANNOTATION: fingerprint}),
        );
        expect_metadata_get(&mut server, json_response(200, meta)).await;
        server
    });
    let outcome = ctx.reconcile_namespace(&namespace("team-a")).await.unwrap();
    assert_eq!(outcome, Outcome::UpToDate);
    let mut server = api.await.unwrap();
    drop(ctx);
    assert!(
        server.next_request().await.is_none(),
        "no write when unchanged"
    );
}

#[tokio::test]
async fn excluded_terminating_and_tokenless_namespaces_cost_no_request() {
    let excluded = Selection::new(&[], &["team-a".to_string()]);
    let (ctx, mut server) = context(excluded, Some(rendered()));
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
    drop(ctx);
    assert!(server.next_request().await.is_none());

    let (ctx, mut server) = context(Selection::default(), None);
    assert_eq!(
        ctx.reconcile_namespace(&namespace("team-a")).await.unwrap(),
        Outcome::NoTokenYet
    );
    drop(ctx);
    assert!(server.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_api_server_times_out() {
    let (ctx, mut server) = context(Selection::default(), Some(rendered()));
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
    assert_eq!(err.metric_label(), "timeout", "{err}");
    assert!(err.to_string().contains("team-a/ecr-pull-secret"), "{err}");
    api.abort();
}

#[tokio::test]
async fn api_errors_carry_context() {
    let (ctx, mut server) = context(Selection::default(), Some(rendered()));
    tokio::spawn(async move {
        let (_, send) = server.next_request().await.unwrap();
        send.send_response(json_response(
            403,
            json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"secrets is forbidden"}),
        ));
    });
    let err = ctx
        .reconcile_namespace(&namespace("team-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ecr_pull_secrets::Error::Kube { source: Error::Api(ref s), .. } if s.code == 403),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("read Secret team-a/ecr-pull-secret"),
        "{err}"
    );
}

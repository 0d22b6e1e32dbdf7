//! The admin listener every replica serves: `/healthz`, `/readyz`, `/metrics`. No debug
//! endpoints. Readiness never depends on leadership (that would deadlock rollouts and drains);
//! liveness never depends on AWS or the API server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Answering at all proves the runtime is responsive.
async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let lease_problem = state
        .health
        .lease_problem
        .lock()
        .expect("health lock")
        .clone();
    if state.health.shutting_down.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string())
    } else if !state.health.started.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string())
    } else if let Some(problem) = lease_problem {
        (StatusCode::SERVICE_UNAVAILABLE, problem)
    } else {
        (StatusCode::OK, "ok".to_string())
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Binds the listener (so a taken port fails at start) and returns the bound address and the
/// serving future.
pub(crate) async fn bind(
    address: &str,
    state: AdminState,
) -> std::io::Result<(
    SocketAddr,
    impl Future<Output = std::io::Result<()>> + use<>,
)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((local, axum::serve(listener, router(state)).into_future()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(state: &AdminState, path: &str) -> (StatusCode, String) {
        let response = router(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn probes_follow_the_lifecycle_not_leadership() {
        let state = AdminState {
            health: Arc::default(),
            metrics: Arc::new(Metrics::new()),
        };
        assert_eq!(call(&state, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            call(&state, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "starting".into())
        );
        state.health.started.store(true, Ordering::SeqCst);
        // Not leading, still ready.
        assert_eq!(call(&state, "/readyz").await, (StatusCode::OK, "ok".into()));
        state.health.shutting_down.store(true, Ordering::SeqCst);
        assert_eq!(
            call(&state, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(call(&state, "/healthz").await.0, StatusCode::OK);
        let (status, body) = call(&state, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ecr_pull_secrets_leader 0"), "{body}");
        assert_eq!(call(&state, "/debug/pprof").await.0, StatusCode::NOT_FOUND);
    }
}

//! Fetching ECR tokens from AWS and the refresh loop that keeps the last good token while AWS
//! fails.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::watch;

use crate::core::token::{
    Backoff, ECR_PUBLIC, ErrorClass, FetchError, InvalidToken, RefreshPolicy, Token, classify,
    classify_failure, error_chain,
};

/// A fetch error from an SDK error: classified, with the cause chain on one line.
pub(crate) fn fetch_error<E, R>(region: &str, err: &SdkError<E, R>) -> FetchError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let (class, advice, message) = match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let (class, advice) = classify(e.code(), None);
            let message = format!(
                "{}: {}",
                e.code().unwrap_or("unknown error"),
                e.message().unwrap_or("no message")
            );
            (class, advice, message)
        }
        SdkError::TimeoutError(_) => (ErrorClass::Transient, None, "timed out".to_string()),
        _ => {
            let chain = error_chain(err);
            let (class, advice) = classify_failure(&chain);
            (class, advice, chain)
        }
    };
    FetchError {
        region: region.to_string(),
        class,
        message,
        advice,
    }
}

pub(crate) trait TokenSource: Send + Sync + 'static {
    /// The region, or [`ECR_PUBLIC`].
    fn identity(&self) -> &str;
    fn fetch(&self) -> impl Future<Output = Result<Token, FetchError>> + Send;
}

/// SDK settings shared by both ECR clients.
fn sdk_settings(region: &str) -> (aws_config::Region, RetryConfig, TimeoutConfig) {
    (
        aws_config::Region::new(region.to_string()),
        // One attempt per call: our own backoff spaces retries, so "one call per refresh" is
        // exact and the attempts are visible in logs.
        RetryConfig::disabled(),
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(30))
            .build(),
    )
}

/// Both ECR APIs give the expiry as an optional SDK timestamp.
fn expiry(t: Option<&aws_smithy_types::DateTime>) -> Result<SystemTime, InvalidToken> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .ok_or(InvalidToken::NoExpiry)
}

/// GetAuthorizationToken against one region of private ECR.
pub(crate) struct EcrTokenSource {
    client: aws_sdk_ecr::Client,
    region: String,
}

impl EcrTokenSource {
    pub(crate) fn new(sdk_config: &aws_config::SdkConfig, region: &str) -> EcrTokenSource {
        let (r, retry, timeout) = sdk_settings(region);
        let config = aws_sdk_ecr::config::Builder::from(sdk_config)
            .region(r)
            .retry_config(retry)
            .timeout_config(timeout)
            .build();
        EcrTokenSource {
            client: aws_sdk_ecr::Client::from_conf(config),
            region: region.to_string(),
        }
    }
}

impl TokenSource for EcrTokenSource {
    fn identity(&self) -> &str {
        &self.region
    }

    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched_at = SystemTime::now();
        let output = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| fetch_error(&self.region, &e))?;
        let invalid = |e| FetchError::invalid(&self.region, e);
        let data = output
            .authorization_data()
            .first()
            .ok_or(InvalidToken::Missing)
            .map_err(invalid)?;
        let expires_at = expiry(data.expires_at()).map_err(invalid)?;
        Token::private(
            &self.region,
            data.authorization_token().unwrap_or_default(),
            data.proxy_endpoint().unwrap_or_default(),
            fetched_at,
            expires_at,
        )
        .map_err(invalid)
    }
}

/// GetAuthorizationToken of ECR Public, which only exists in us-east-1.
pub(crate) struct EcrPublicTokenSource {
    client: aws_sdk_ecrpublic::Client,
}

impl EcrPublicTokenSource {
    pub(crate) fn new(sdk_config: &aws_config::SdkConfig) -> EcrPublicTokenSource {
        let (r, retry, timeout) = sdk_settings("us-east-1");
        let config = aws_sdk_ecrpublic::config::Builder::from(sdk_config)
            .region(r)
            .retry_config(retry)
            .timeout_config(timeout)
            .build();
        EcrPublicTokenSource {
            client: aws_sdk_ecrpublic::Client::from_conf(config),
        }
    }
}

impl TokenSource for EcrPublicTokenSource {
    fn identity(&self) -> &str {
        ECR_PUBLIC
    }

    async fn fetch(&self) -> Result<Token, FetchError> {
        let fetched_at = SystemTime::now();
        let output = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| fetch_error(ECR_PUBLIC, &e))?;
        let invalid = |e| FetchError::invalid(ECR_PUBLIC, e);
        let data = output
            .authorization_data()
            .ok_or(InvalidToken::Missing)
            .map_err(invalid)?;
        let expires_at = expiry(data.expires_at()).map_err(invalid)?;
        Token::public(
            data.authorization_token().unwrap_or_default(),
            fetched_at,
            expires_at,
        )
        .map_err(invalid)
    }
}

/// Keeps one region's token fresh: fetch, publish, sleep until the refresh time; on failure back
/// off while the last good token stays published. Runs until dropped.
pub(crate) async fn keep_fresh<S: TokenSource>(
    source: S,
    policy: RefreshPolicy,
    backoff: Backoff,
    publish: watch::Sender<BTreeMap<String, Token>>,
    metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
) {
    keep_fresh_by(source, policy, backoff, publish, metrics, SystemTime::now).await
}

/// [`keep_fresh`] on the clock `now` (tests drive it from tokio's paused time).
async fn keep_fresh_by<S: TokenSource>(
    source: S,
    policy: RefreshPolicy,
    backoff: Backoff,
    publish: watch::Sender<BTreeMap<String, Token>>,
    metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    now: impl Fn() -> SystemTime,
) {
    let mut attempt = 0u32;
    loop {
        match source.fetch().await {
            Ok(token) => {
                attempt = 0;
                metrics.aws_call(source.identity(), "ok");
                metrics.token_fetched(source.identity(), token.expires_at);
                let refresh_at = policy.refresh_at(&token, rand::random());
                let wait = refresh_at.duration_since(now()).unwrap_or_default();
                tracing::info!(
                    identity = source.identity(),
                    registry = token.registry,
                    expires_at = %crate::core::time::rfc3339(token.expires_at),
                    refresh_in_seconds = wait.as_secs(),
                    "fetched ECR token"
                );
                publish.send_modify(|tokens| {
                    tokens.insert(source.identity().to_string(), token);
                });
                tokio::time::sleep(wait).await;
            }
            Err(err) => {
                metrics.aws_call(source.identity(), err.class.as_str());
                metrics.token_fetch_failed(source.identity(), err.class.as_str(), &err.to_string());
                let last_expiry = publish
                    .borrow()
                    .get(source.identity())
                    .map(|t| t.expires_at);
                let (delay, rule) =
                    backoff.next_retry(err.class, attempt, now(), last_expiry, rand::random());
                attempt = attempt.saturating_add(1);
                let last_expires = last_expiry.map(crate::core::time::rfc3339);
                let last_expires = last_expires.as_deref().unwrap_or("none");
                let retry_in_ms = delay.as_millis() as u64;
                let retry_rule = rule.as_str();
                match err.class {
                    ErrorClass::Configuration => tracing::error!(
                        identity = source.identity(),
                        error = %err,
                        retry_in_ms,
                        retry_rule,
                        last_good_token_expires_at = last_expires,
                        "token refresh failed; keeping the last good token"
                    ),
                    ErrorClass::Transient => tracing::warn!(
                        identity = source.identity(),
                        error = %err,
                        retry_in_ms,
                        retry_rule,
                        last_good_token_expires_at = last_expires,
                        "token refresh failed; keeping the last good token"
                    ),
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::token::tests::{t0, token_at};
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A source that answers from a script and records when it was called.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Token, FetchError>>>,
        calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    impl TokenSource for Scripted {
        fn identity(&self) -> &str {
            "us-east-1"
        }
        async fn fetch(&self) -> Result<Token, FetchError> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let next = self.answers.lock().unwrap().pop_front();
            match next {
                Some(answer) => answer,
                None => futures::future::pending().await,
            }
        }
    }

    fn throttled() -> FetchError {
        FetchError {
            region: "us-east-1".into(),
            class: ErrorClass::Transient,
            message: "ThrottlingException: Rate exceeded".into(),
            advice: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_last_good_token_and_backs_off_on_failure() {
        let now = SystemTime::now();
        let first = token_at("us-east-1", "one", now, Duration::from_secs(100));
        let second = token_at("us-east-1", "two", now, Duration::from_secs(1000));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let source = Scripted {
            answers: Mutex::new(VecDeque::from(vec![
                Ok(first.clone()),
                Err(throttled()),
                Err(throttled()),
                Err(throttled()),
                Ok(second.clone()),
            ])),
            calls: calls.clone(),
        };
        let (tx, mut rx) = watch::channel(BTreeMap::new());
        let policy = RefreshPolicy {
            margin: Duration::ZERO,
            fraction: 0.5,
            jitter: 0.0,
            max_interval: None,
        };
        let metrics = std::sync::Arc::new(crate::telemetry::metrics::Metrics::new());
        let task = tokio::spawn(keep_fresh(source, policy, Backoff::default(), tx, metrics));

        rx.changed().await.unwrap();
        assert_eq!(rx.borrow()["us-east-1"].password(), "one");
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow()["us-east-1"].password(), "two");
        task.abort();

        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 5);
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        // First refresh about half-way through a 100 s token.
        assert!(
            gaps[0] >= Duration::from_secs(49) && gaps[0] <= Duration::from_secs(51),
            "{gaps:?}"
        );
        // Then backoff: each delay within [ceiling/2, ceiling] of 1 s, 2 s, 4 s.
        for (i, ceiling) in [1u64, 2, 4].into_iter().enumerate() {
            let gap = gaps[i + 1];
            assert!(
                gap >= Duration::from_millis(ceiling * 500) && gap <= Duration::from_secs(ceiling),
                "retry {i}: {gap:?}"
            );
        }
    }

    /// Wall time that moves with tokio's (paused) clock, from a fixed start.
    #[derive(Clone, Copy)]
    struct Clock {
        wall: SystemTime,
        start: tokio::time::Instant,
    }

    impl Clock {
        fn start() -> Clock {
            Clock {
                wall: t0(),
                start: tokio::time::Instant::now(),
            }
        }
        fn now(&self) -> SystemTime {
            self.wall + self.start.elapsed()
        }
        fn secs(&self) -> f64 {
            self.start.elapsed().as_secs_f64()
        }
    }

    /// AWS with outages: a call fails with `class` while the clock is in one of `outages`
    /// (seconds since start), and is otherwise answered with a fresh `ttl` token. Records each
    /// call's time and outcome.
    struct Outages {
        clock: Clock,
        ttl: Duration,
        outages: Vec<(f64, f64, ErrorClass)>,
        calls: Arc<Mutex<Vec<(f64, bool)>>>,
    }

    impl TokenSource for Outages {
        fn identity(&self) -> &str {
            "us-east-1"
        }
        async fn fetch(&self) -> Result<Token, FetchError> {
            let at = self.clock.secs();
            let failing = self
                .outages
                .iter()
                .find(|(from, until, _)| (*from..*until).contains(&at));
            self.calls.lock().unwrap().push((at, failing.is_none()));
            match failing {
                Some(&(_, _, class)) => Err(FetchError {
                    class,
                    ..throttled()
                }),
                None => Ok(token_at("us-east-1", "p", self.clock.now(), self.ttl)),
            }
        }
    }

    /// Runs keep_fresh on `source` until it has published `tokens` tokens; returns the calls.
    async fn run_until_published(source: Outages, tokens: usize) -> Vec<(f64, bool)> {
        let calls = source.calls.clone();
        let clock = source.clock;
        let (tx, mut rx) = watch::channel(BTreeMap::new());
        let policy = RefreshPolicy {
            margin: Duration::ZERO,
            fraction: 0.5,
            jitter: 0.0,
            max_interval: None,
        };
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        let task = tokio::spawn(keep_fresh_by(
            source,
            policy,
            Backoff::default(),
            tx,
            metrics,
            move || clock.now(),
        ));
        // Virtual time: a day passes in milliseconds, and a stuck loop still fails.
        tokio::time::timeout(Duration::from_secs(2 * 86_400), async {
            for _ in 0..tokens {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("the tokens were published");
        task.abort();
        calls.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn after_an_outage_that_outlived_the_token_recovery_is_noticed_within_seconds() {
        // (token lifetime, outage start and end in seconds since the first fetch)
        let cases = [
            (40.0, 10.0, 46.0), // the run: 40 s tokens, a 46 s outage
            (40.0, 10.0, 41.0),
            (40.0, 19.0, 77.0),
            (100.0, 1.0, 107.0),
            (100.0, 49.0, 400.0),
            (43_200.0, 1.0, 43_210.0), // 12 h tokens, AWS back 10 s after expiry
            (43_200.0, 21_000.0, 43_200.0 + 1_000.0),
        ];
        for (ttl, from, until) in cases {
            let clock = Clock::start();
            let source = Outages {
                clock,
                ttl: Duration::from_secs_f64(ttl),
                outages: vec![(from, until, ErrorClass::Transient)],
                calls: Arc::default(),
            };
            let calls = run_until_published(source, 2).await;
            let case = format!("ttl {ttl}, outage {from}..{until}: calls {calls:?}");
            let (last, ok) = *calls.last().unwrap();
            assert!(ok, "{case}");
            // The first call after AWS answers again succeeds, within 4 s of it.
            assert!(last >= until && last - until <= 4.0, "{case}");
            assert!(calls[1..calls.len() - 1].iter().all(|c| !c.1), "{case}");
            // One attempt in the last 5 s before expiry (the refresh itself at half-life, or
            // the backoff clipped to land there) ...
            let expiry = ttl;
            assert!(
                calls.iter().any(|c| (expiry - 5.0..expiry).contains(&c.0)),
                "{case}"
            );
            // ... and from then on, never more than 4 s between attempts.
            for pair in calls.windows(2).filter(|w| w[0].0 >= expiry - 5.0) {
                assert!(pair[1].0 - pair[0].0 <= 4.0, "{case}");
            }
            // Before that, the backoff is plain exponential: throttle-friendly.
            for pair in calls.windows(2).filter(|w| w[1].0 < expiry - 5.0) {
                assert!(pair[1].0 - pair[0].0 >= 0.5, "{case}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_token_even_configuration_errors_retry_within_seconds() {
        for class in [ErrorClass::Configuration, ErrorClass::Transient] {
            let clock = Clock::start();
            // Denied (or down) from the start for two minutes, then the key is fixed.
            let source = Outages {
                clock,
                ttl: Duration::from_secs(43_200),
                outages: vec![(0.0, 120.0, class)],
                calls: Arc::default(),
            };
            let calls = run_until_published(source, 1).await;
            let case = format!("{class:?}: calls {calls:?}");
            let (last, ok) = *calls.last().unwrap();
            assert!(ok && (120.0..=124.0).contains(&last), "{case}");
            for pair in calls.windows(2) {
                let gap = pair[1].0 - pair[0].0;
                assert!((0.5..=4.0).contains(&gap), "{case}");
            }
            // At most one call per 2 s once the backoff has grown: 20 calls/s per account and
            // region leave room for many identities.
            assert!(calls.len() <= 70, "{case}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn configuration_errors_stay_slow_before_expiry_and_retry_fast_after() {
        let clock = Clock::start();
        // 12 h tokens; the keys are revoked at 1 h and fixed 1 min after the token expired.
        let source = Outages {
            clock,
            ttl: Duration::from_secs(43_200),
            outages: vec![(3600.0, 43_260.0, ErrorClass::Configuration)],
            calls: Arc::default(),
        };
        let calls = run_until_published(source, 2).await;
        let failed: Vec<f64> = calls.iter().filter(|c| !c.1).map(|c| c.0).collect();
        // The first failure is the refresh at 6 h; the next comes 15 to 30 s later.
        assert_eq!(failed[0], 21_600.0);
        assert!(
            (15.0..=30.0).contains(&(failed[1] - failed[0])),
            "{failed:?}"
        );
        let before_expiry = failed.iter().filter(|&&t| t < 43_195.0).count();
        // After the first few, one call every 2.5 to 5 min: at most about 150 in 6 h.
        assert!(before_expiry <= 150, "{before_expiry} calls before expiry");
        let (last, ok) = *calls.last().unwrap();
        assert!(ok && (43_260.0..=43_264.0).contains(&last), "{calls:?}");
    }
}

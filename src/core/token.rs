//! ECR authorization tokens as values: validating one, deciding when to refresh it, classifying
//! fetch errors and when to retry them. No I/O: fetching is `aws::ecr`.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::core::backoff::Exponential;
use crate::core::registry::RegistryHost;

/// Key of ECR Public's token in the token map (private tokens are keyed by region).
pub(crate) const ECR_PUBLIC: &str = "ecr-public";
/// The one registry host of ECR Public.
pub(crate) const ECR_PUBLIC_HOST: &str = "public.ecr.aws";

/// An ECR token for one identity (a region, or ECR Public). `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The region for private ECR, [`ECR_PUBLIC`] for ECR Public.
    pub(crate) identity: String,
    /// The registry this token is written under when no hosts are configured: the
    /// credentials' own account in the region (ECR's `proxyEndpoint`), or `public.ecr.aws`.
    pub(crate) registry: String,
    /// base64 of `AWS:<password>`, as ECR returns it and as docker's `auth` field wants it.
    auth: String,
    pub(crate) fetched_at: SystemTime,
    pub(crate) expires_at: SystemTime,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("identity", &self.identity)
            .field("registry", &self.registry)
            .field("auth", &"<redacted>")
            .field("fetched_at", &self.fetched_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a token returned by AWS was refused. Nothing invalid ever reaches a Secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("the response holds no authorization data")]
    Missing,
    #[error("the authorization token is not valid base64")]
    NotBase64,
    #[error(
        "the authorization token does not decode to `AWS:<password>` with a non-empty password"
    )]
    NotUserPassword,
    #[error("the response has no expiry time")]
    NoExpiry,
    #[error("the token is already expired")]
    Expired,
    #[error("the proxy endpoint is not an ECR registry: {0}")]
    ProxyEndpoint(String),
}

impl Token {
    /// A private ECR token from GetAuthorizationToken's answer in `region`.
    pub fn private(
        region: &str,
        authorization_token: &str,
        proxy_endpoint: &str,
        fetched_at: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Token, InvalidToken> {
        let registry = proxy_endpoint
            .parse::<RegistryHost>()
            .map_err(|e| InvalidToken::ProxyEndpoint(e.to_string()))?;
        Token::validated(
            region,
            registry.host(),
            authorization_token,
            fetched_at,
            expires_at,
        )
    }

    /// An ECR Public token (always issued in us-east-1).
    pub(crate) fn public(
        authorization_token: &str,
        fetched_at: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Token, InvalidToken> {
        Token::validated(
            ECR_PUBLIC,
            ECR_PUBLIC_HOST,
            authorization_token,
            fetched_at,
            expires_at,
        )
    }

    /// Refuses anything that would render an unusable config. Also checks a token read back
    /// from a pull secret we wrote (`core::adopt`).
    pub(crate) fn validated(
        identity: &str,
        registry: &str,
        authorization_token: &str,
        fetched_at: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Token, InvalidToken> {
        let decoded = STANDARD
            .decode(authorization_token.trim())
            .map_err(|_| InvalidToken::NotBase64)?;
        let decoded = String::from_utf8(decoded).map_err(|_| InvalidToken::NotUserPassword)?;
        match decoded.split_once(':') {
            Some(("AWS", password)) if !password.is_empty() => {}
            _ => return Err(InvalidToken::NotUserPassword),
        }
        if expires_at <= fetched_at {
            return Err(InvalidToken::Expired);
        }
        Ok(Token {
            identity: identity.to_string(),
            registry: registry.to_string(),
            auth: authorization_token.trim().to_string(),
            fetched_at,
            expires_at,
        })
    }

    /// base64 of `AWS:<password>`.
    pub(crate) fn auth(&self) -> &str {
        &self.auth
    }

    /// The password half of the token (what docker sends as the password).
    pub(crate) fn password(&self) -> String {
        let decoded = STANDARD
            .decode(&self.auth)
            .expect("validated in Token::validated");
        let decoded = String::from_utf8(decoded).expect("validated in Token::validated");
        decoded["AWS:".len()..].to_string()
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.fetched_at)
            .unwrap_or_default()
    }
}

/// When to refresh a token, relative to its expiry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RefreshPolicy {
    /// Refresh at least this long before expiry.
    pub(crate) margin: Duration,
    /// ... and at least this fraction of the token's lifetime before expiry.
    pub(crate) fraction: f64,
    /// Refresh up to this fraction of the lead earlier, at random, so replicas and identities
    /// do not all call AWS in the same second.
    pub(crate) jitter: f64,
    /// Refresh at most this long after the fetch, whatever the lifetime (`--max-refresh-interval`).
    pub(crate) max_interval: Option<Duration>,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            margin: Duration::from_secs(3600),
            fraction: 0.5,
            jitter: 0.1,
            max_interval: None,
        }
    }
}

impl RefreshPolicy {
    /// `expires_at - max(margin, lifetime * fraction)`, moved earlier by up to `jitter * lead`.
    /// `random` is in `[0, 1)`. A margin that would eat 90 % of the lifetime or more (short
    /// tokens, as in tests) is ignored rather than causing a refresh storm.
    pub(crate) fn refresh_at(&self, token: &Token, random: f64) -> SystemTime {
        let lifetime = token.lifetime();
        let by_fraction = lifetime.mul_f64(self.fraction);
        let mut lead = self.margin.max(by_fraction);
        if lead >= lifetime.mul_f64(0.9) {
            lead = by_fraction;
        }
        let lead = lead + lead.mul_f64(self.jitter * random.clamp(0.0, 1.0));
        let lead = lead.min(lifetime);
        let by_lifetime = token.expires_at - lead;
        // checked: a bound past the end of time is no bound, not a panic.
        match self
            .max_interval
            .and_then(|max| token.fetched_at.checked_add(max))
        {
            Some(bound) => by_lifetime.min(bound),
            None => by_lifetime,
        }
    }
}

/// How a failed fetch should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Throttling, 5xx, timeouts, connection errors: retry soon with backoff.
    Transient,
    /// Credentials or permissions are wrong: retrying fast will not help; a human must act.
    Configuration,
}

impl ErrorClass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Configuration => "configuration",
        }
    }
}

/// A failed token fetch, classified, with advice that never contains secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("GetAuthorizationToken in {region} failed ({}): {message}{}", class.as_str(), advice.map(|a| format!("; {a}")).unwrap_or_default())]
pub(crate) struct FetchError {
    pub(crate) region: String,
    pub(crate) class: ErrorClass,
    pub(crate) message: String,
    pub(crate) advice: Option<&'static str>,
}

/// Classifies an AWS error from its error code and HTTP status.
pub(crate) fn classify(
    code: Option<&str>,
    status: Option<u16>,
) -> (ErrorClass, Option<&'static str>) {
    match code {
        Some("AccessDeniedException" | "AccessDenied") => (
            ErrorClass::Configuration,
            Some(
                "the credentials lack permission ecr:GetAuthorizationToken; grant it in the identity's IAM policy (resource \"*\")",
            ),
        ),
        Some(
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken",
        ) => (
            ErrorClass::Configuration,
            Some(
                "AWS does not recognise the access key or secret key; check the credentials Secret or environment and rotate the keys if they were revoked",
            ),
        ),
        Some("ExpiredTokenException" | "ExpiredToken" | "RequestExpired") => (
            ErrorClass::Configuration,
            Some(
                "the session credentials have expired; provide fresh keys (or a role to assume instead of a session token)",
            ),
        ),
        Some("InvalidParameterException" | "ValidationException") => {
            (ErrorClass::Configuration, None)
        }
        _ => {
            // Everything else (throttling, ServerException, 5xx, unknown codes) is retried soon.
            let _ = status;
            (ErrorClass::Transient, None)
        }
    }
}

/// Classifies a failure that is not an AWS error response (credentials, DNS, connection) from
/// its error chain: the SDK reports these as opaque dispatch or construction failures.
pub(crate) fn classify_failure(chain: &str) -> (ErrorClass, Option<&'static str>) {
    let lower = chain.to_ascii_lowercase();
    if lower.contains("assumerole")
        || lower.contains("assume role")
        || lower.contains("sts") && lower.contains("denied")
    {
        (
            ErrorClass::Configuration,
            Some(
                "assuming the role failed: check --role-arn, the role's trust policy (and external ID), and that the base credentials may call sts:AssumeRole",
            ),
        )
    } else if lower.contains("credential") {
        (
            ErrorClass::Configuration,
            Some(
                "no usable AWS credentials: set --credentials-secret, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or another source of the default chain (profile, web identity)",
            ),
        )
    } else if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        (
            ErrorClass::Configuration,
            Some(
                "the ECR endpoint does not resolve: check the region name, and DNS from the controller's pod",
            ),
        )
    } else {
        (
            ErrorClass::Transient,
            Some(
                "check network access from the controller's pod to the ECR endpoint of this region",
            ),
        )
    }
}

impl FetchError {
    pub(crate) fn invalid(identity: &str, e: InvalidToken) -> FetchError {
        FetchError {
            region: identity.to_string(),
            class: ErrorClass::Transient,
            message: format!("ECR answered an unusable token: {e}"),
            advice: None,
        }
    }
}

/// The whole `source()` chain on one line: SDK errors hide the cause two levels deep.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Where tokens come from: ECR in production, a scripted source in tests.
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) configuration_initial: Duration,
    /// Before expiry, one attempt lands between this long and half this long before it.
    pub(crate) expiry_lead: Duration,
    /// Ceiling of the delay within `expiry_lead` of expiry, after it, or without a token; the
    /// delay is a random point in its upper half, like every backoff delay.
    pub(crate) urgent_max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            configuration_initial: Duration::from_secs(30),
            expiry_lead: Duration::from_secs(5),
            urgent_max: Duration::from_secs(4),
        }
    }
}

/// Why a retry delay was chosen: the log line says which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryRule {
    /// Plain exponential backoff; the last good token outlives it comfortably.
    Backoff,
    /// Shortened so that an attempt lands shortly before the last good token expires.
    BeforeExpiry,
    /// Within `expiry_lead` of expiry, or past it: the short ceiling applies.
    Expiring,
    /// The last good token has expired: secrets are unusable until a fetch succeeds.
    Expired,
    /// No token was ever fetched: nothing has been written yet.
    NoToken,
}

impl RetryRule {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryRule::Backoff => "backoff",
            RetryRule::BeforeExpiry => "before_expiry",
            RetryRule::Expiring => "expiring",
            RetryRule::Expired => "expired",
            RetryRule::NoToken => "no_token",
        }
    }
}

impl Backoff {
    /// The exponential backoff alone, before the rules around expiry: from `initial` (or
    /// `configuration_initial`) doubling up to `max`.
    fn plain(&self, class: ErrorClass, attempt: u32, random: f64) -> Duration {
        let initial = match class {
            ErrorClass::Transient => self.initial,
            ErrorClass::Configuration => self.configuration_initial,
        };
        Exponential {
            initial,
            max: self.max,
        }
        .delay(attempt, random)
    }

    /// Delay before retry number `attempt` (0-based) after an error of `class`, at `now`, when
    /// the last good token expires at `last_good_expiry` (`None`: there never was one).
    /// `random` is in `[0, 1)`. Guarantees: `now + delay <= max(now, last_good_expiry) +
    /// urgent_max`; more than `expiry_lead` before expiry, `now + delay <= expiry -
    /// expiry_lead / 2`; never longer than the plain backoff, nor shorter than `initial / 2`.
    pub(crate) fn next_retry(
        &self,
        class: ErrorClass,
        attempt: u32,
        now: SystemTime,
        last_good_expiry: Option<SystemTime>,
        random: f64,
    ) -> (Duration, RetryRule) {
        let random = random.clamp(0.0, 1.0);
        let backoff = self.plain(class, attempt, random);
        let urgent = || backoff.min(self.urgent_max.mul_f64(0.5 + 0.5 * random));
        let Some(expiry) = last_good_expiry else {
            return (urgent(), RetryRule::NoToken);
        };
        let left = expiry.duration_since(now).unwrap_or_default();
        if left.is_zero() {
            return (urgent(), RetryRule::Expired);
        }
        if left <= self.expiry_lead {
            return (urgent(), RetryRule::Expiring);
        }
        // Land between `expiry_lead` and half of it before expiry (jittered, so identities
        // fetched together do not call together), never sooner than the shortest backoff.
        let lead = self.expiry_lead.mul_f64(1.0 - 0.5 * random);
        let until_last_chance = (left - lead).max(self.initial / 2);
        if backoff > until_last_chance {
            (until_last_chance, RetryRule::BeforeExpiry)
        } else {
            (backoff, RetryRule::Backoff)
        }
    }
}

/// Keeps one region's token fresh: fetch, publish, sleep until the refresh time; on failure back
/// off while the last good token stays published. Runs until dropped.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn token_at(
        region: &str,
        password: &str,
        fetched_at: SystemTime,
        ttl: Duration,
    ) -> Token {
        Token::private(
            region,
            &STANDARD.encode(format!("AWS:{password}")),
            &format!("https://123456789012.dkr.ecr.{region}.amazonaws.com"),
            fetched_at,
            fetched_at + ttl,
        )
        .unwrap()
    }

    pub(crate) fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn refresh_at_twelve_hour_token_is_about_six_hours_in() {
        let token = token_at("us-east-1", "p", t0(), Duration::from_secs(12 * 3600));
        let policy = RefreshPolicy::default();
        assert_eq!(
            policy.refresh_at(&token, 0.0),
            t0() + Duration::from_secs(6 * 3600)
        );
        // Jitter only ever moves the refresh earlier, by at most 10 % of the lead.
        assert_eq!(
            policy.refresh_at(&token, 1.0),
            t0() + Duration::from_secs(6 * 3600 - 2160)
        );
    }

    #[test]
    fn max_interval_bounds_the_refresh() {
        let token = token_at("us-east-1", "p", t0(), Duration::from_secs(12 * 3600));
        let policy = |max| RefreshPolicy {
            max_interval: Some(Duration::from_secs(max)),
            ..RefreshPolicy::default()
        };
        // Earlier than half the lifetime: the bound wins.
        assert_eq!(
            policy(3600).refresh_at(&token, 0.0),
            t0() + Duration::from_secs(3600)
        );
        // Later: the lifetime rule wins; the bound never delays a refresh.
        assert_eq!(
            policy(10 * 3600).refresh_at(&token, 0.0),
            t0() + Duration::from_secs(6 * 3600)
        );
    }

    #[test]
    fn refresh_at_table() {
        let h = |h: u64| Duration::from_secs(h * 3600);
        let s = Duration::from_secs;
        // (lifetime, margin, fraction, expected delay after fetch with random = 0)
        let cases = [
            (h(12), h(1), 0.5, h(6)),
            (h(12), h(8), 0.5, h(4)),   // margin dominates
            (h(12), h(1), 0.25, h(9)),  // fraction lower, margin still below
            (h(12), h(11), 0.5, h(6)),  // margin eats >90 % of lifetime: ignored
            (s(20), h(1), 0.5, s(10)),  // short test token
            (s(20), s(5), 0.25, s(15)), // margin 5 s = lifetime * 0.25
            (s(20), s(12), 0.25, s(8)), // margin wins
        ];
        for (lifetime, margin, fraction, expected) in cases {
            let token = token_at("us-east-1", "p", t0(), lifetime);
            let policy = RefreshPolicy {
                margin,
                fraction,
                jitter: 0.1,
                max_interval: None,
            };
            assert_eq!(
                policy.refresh_at(&token, 0.0),
                t0() + expected,
                "lifetime {lifetime:?} margin {margin:?} fraction {fraction}"
            );
            assert!(policy.refresh_at(&token, 0.999) < token.expires_at);
            assert!(policy.refresh_at(&token, 0.999) >= t0());
        }
    }

    #[test]
    fn token_validation_refuses_unusable_tokens() {
        let ok = STANDARD.encode("AWS:secret");
        let host = "https://123456789012.dkr.ecr.us-east-1.amazonaws.com";
        let later = t0() + Duration::from_secs(60);
        assert!(Token::private("us-east-1", &ok, host, t0(), later).is_ok());
        let cases = [
            ("", host, later, InvalidToken::NotUserPassword),
            ("!!!", host, later, InvalidToken::NotBase64),
            (
                &STANDARD.encode("AWS:") as &str,
                host,
                later,
                InvalidToken::NotUserPassword,
            ),
            (
                &STANDARD.encode("bob:pw"),
                host,
                later,
                InvalidToken::NotUserPassword,
            ),
            (
                &STANDARD.encode("no-colon"),
                host,
                later,
                InvalidToken::NotUserPassword,
            ),
            (&ok, host, t0(), InvalidToken::Expired),
        ];
        for (auth, host, expires, expected) in cases {
            assert_eq!(
                Token::private("us-east-1", auth, host, t0(), expires).unwrap_err(),
                expected,
                "{auth:?}"
            );
        }
        assert!(matches!(
            Token::private("us-east-1", &ok, "https://example.com", t0(), later),
            Err(InvalidToken::ProxyEndpoint(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = token_at("us-east-1", "hunter2", t0(), Duration::from_secs(60));
        let shown = format!("{token:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains(token.auth()));
        assert_eq!(token.password(), "hunter2");
    }

    #[test]
    fn classification_table() {
        let cases = [
            (Some("ThrottlingException"), ErrorClass::Transient),
            (Some("ServerException"), ErrorClass::Transient),
            (Some("ServiceUnavailable"), ErrorClass::Transient),
            (None, ErrorClass::Transient),
            (Some("AccessDeniedException"), ErrorClass::Configuration),
            (
                Some("UnrecognizedClientException"),
                ErrorClass::Configuration,
            ),
            (Some("InvalidClientTokenId"), ErrorClass::Configuration),
            (Some("InvalidSignatureException"), ErrorClass::Configuration),
            (Some("ExpiredTokenException"), ErrorClass::Configuration),
        ];
        for (code, expected) in cases {
            assert_eq!(classify(code, None).0, expected, "{code:?}");
        }
        let (_, advice) = classify(Some("AccessDeniedException"), None);
        assert!(advice.unwrap().contains("ecr:GetAuthorizationToken"));
    }

    #[test]
    fn failure_classification_table() {
        let cases = [
            (
                "dispatch failure: io error: connection refused (os error 111)",
                ErrorClass::Transient,
            ),
            (
                "dispatch failure: other: client error (Connect): dns error: failed to lookup address information",
                ErrorClass::Configuration,
            ),
            (
                "failed to construct request: no credentials in the property bag",
                ErrorClass::Configuration,
            ),
            (
                "dispatch failure: other: an error occurred while loading credentials",
                ErrorClass::Configuration,
            ),
            (
                "failed to load credentials: AssumeRole: AccessDenied: not authorized",
                ErrorClass::Configuration,
            ),
            ("dispatch failure: timeout", ErrorClass::Transient),
        ];
        for (chain, expected) in cases {
            let (class, advice) = classify_failure(chain);
            assert_eq!(class, expected, "{chain}");
            assert!(advice.is_some(), "{chain}");
        }
        assert!(
            classify_failure("failed to load credentials: AssumeRole failed")
                .1
                .unwrap()
                .contains("--role-arn")
        );
    }

    #[test]
    fn next_retry_table() {
        let b = Backoff::default();
        let s = Duration::from_secs_f64;
        let (t, c) = (ErrorClass::Transient, ErrorClass::Configuration);
        // The last good token expires `secs` after now, or expired `secs` before.
        let before = |secs: f64| Some(t0() + s(secs));
        let after = |secs: f64| Some(t0() - s(secs));
        use RetryRule::{Backoff as Plain, BeforeExpiry, Expired, Expiring, NoToken};
        // (class, attempt, last good expiry relative to now, random, expected delay, rule)
        let cases = [
            // Far from expiry: the plain backoff, 1 s doubling to 5 min; configuration from 30 s.
            (t, 0, before(6.0 * 3600.0), 1.0, s(1.0), Plain),
            (t, 0, before(6.0 * 3600.0), 0.0, s(0.5), Plain),
            (t, 3, before(6.0 * 3600.0), 1.0, s(8.0), Plain),
            (t, 20, before(6.0 * 3600.0), 1.0, s(300.0), Plain),
            (t, u32::MAX, before(6.0 * 3600.0), 1.0, s(300.0), Plain),
            (c, 0, before(6.0 * 3600.0), 1.0, s(30.0), Plain),
            (c, 0, before(6.0 * 3600.0), 0.0, s(15.0), Plain),
            // The backoff would sleep through expiry: land 2.5 s (random 1) to 5 s (random 0)
            // before it instead.
            (t, 20, before(100.0), 1.0, s(97.5), BeforeExpiry),
            (t, 20, before(100.0), 0.0, s(95.0), BeforeExpiry),
            (t, 7, before(60.0), 1.0, s(57.5), BeforeExpiry),
            (c, 0, before(20.0), 1.0, s(17.5), BeforeExpiry),
            (t, 3, before(10.0), 1.0, s(7.5), BeforeExpiry),
            // ... but never sooner than the shortest backoff.
            (t, 8, before(5.2), 0.0, s(0.5), BeforeExpiry),
            // A backoff that ends before the landing point is left alone.
            (t, 2, before(10.0), 1.0, s(4.0), Plain),
            // The last seconds before expiry: at most 4 s (2 to 4 s, jittered).
            (t, 8, before(5.0), 1.0, s(4.0), Expiring),
            (t, 8, before(3.0), 0.0, s(2.0), Expiring),
            (t, 0, before(3.0), 1.0, s(1.0), Expiring),
            (c, 0, before(1.0), 0.5, s(3.0), Expiring),
            // The case: 40 s tokens, expired 2 s ago, attempt 5; it used to wait 30.4 s.
            (t, 5, after(2.0), 0.9, s(3.8), Expired),
            (t, 0, after(0.0), 1.0, s(1.0), Expired),
            (t, 1, after(60.0), 0.0, s(1.0), Expired),
            (t, 20, after(3600.0), 1.0, s(4.0), Expired),
            // A fixed key works within seconds too.
            (c, 0, after(2.0), 0.0, s(2.0), Expired),
            (c, 9, after(2.0), 1.0, s(4.0), Expired),
            // No token ever: nothing is written yet, so every class retries within seconds.
            (t, 0, None, 1.0, s(1.0), NoToken),
            (t, 10, None, 0.5, s(3.0), NoToken),
            (c, 0, None, 0.0, s(2.0), NoToken),
        ];
        for (i, (class, attempt, expiry, random, delay, rule)) in cases.into_iter().enumerate() {
            assert_eq!(
                b.next_retry(class, attempt, t0(), expiry, random),
                (delay, rule),
                "case {i}: {class:?} attempt {attempt} expiry {expiry:?} random {random}"
            );
        }
    }

    #[test]
    fn next_retry_never_reaches_past_expiry_by_more_than_the_cap() {
        let b = Backoff::default();
        let now = t0();
        let mut offsets: Vec<f64> = (-400..=400).map(|i| f64::from(i) * 0.25).collect();
        offsets.extend([-7200.0, -3600.0, 3600.0, 6.0 * 3600.0, 43_200.0]);
        for class in [ErrorClass::Transient, ErrorClass::Configuration] {
            for attempt in [0, 1, 2, 3, 5, 8, 12, 40] {
                for random in [0.0, 0.1, 0.37, 0.5, 0.83, 0.999, 1.0] {
                    let plain = b.plain(class, attempt, random);
                    for &offset in &offsets {
                        // `offset` seconds until the last good token expires (negative: ago).
                        let expiry = if offset >= 0.0 {
                            now + Duration::from_secs_f64(offset)
                        } else {
                            now - Duration::from_secs_f64(-offset)
                        };
                        let (delay, _) = b.next_retry(class, attempt, now, Some(expiry), random);
                        let case = format!("{class:?} {attempt} {random} {offset}");
                        assert!(delay >= Duration::from_millis(500), "{case}: {delay:?}");
                        assert!(delay <= plain, "{case}: never longer than the backoff");
                        assert!(
                            now + delay <= now.max(expiry) + b.urgent_max,
                            "{case}: {delay:?}"
                        );
                        if offset > 5.0 {
                            assert!(
                                now + delay <= expiry - Duration::from_millis(2500),
                                "{case}: an attempt before expiry, {delay:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

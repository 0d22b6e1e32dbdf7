//! The flag-configured secret's Ready verdict as the leader publishes it: an annotation on the
//! Lease, written in the same request as each renewal (no extra write), which `status` reads
//! with the one `get` of the Lease it already makes. An EcrPullSecret's verdict is its status.
//!
//! Anyone who may update the Lease can write the annotation, so it is parsed as hostile input;
//! the leader overwrites it at its next renewal.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The annotation on the Lease.
pub(crate) const READY_ANNOTATION: &str = "ecr-pull-secrets.io/ready";

/// The flag-configured pipeline's name where an EcrPullSecret's would be: the `resource` label
/// of `ecr_pull_secrets_resource_ready`, and log lines. Not a DNS name, so no resource has it.
pub const FLAGS_RESOURCE: &str = "(flags)";

/// A message longer than this is cut (an annotation is read by people, and a Lease is small).
const MESSAGE_LIMIT: usize = 1024;

/// One Ready verdict: the condition a resource's status would carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored, not refused: a `status` older than the controller that publishes
// still reads the verdict. They are never shown.
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// The flag-configured `--secret-name` the verdict is about.
    pub secret_name: String,
    /// `True` or `False`.
    pub status: String,
    /// `Synced`, `Progressing`, or a Degraded reason (`CredentialsUnavailable`, ...).
    pub reason: String,
    pub message: String,
    /// RFC 3339: since when the status holds (the condition's lastTransitionTime).
    pub since: String,
}

impl Readiness {
    /// The annotation's value: one line of JSON, the message cut at [`MESSAGE_LIMIT`] bytes.
    pub fn to_annotation(&self) -> String {
        let mut shown = self.clone();
        if shown.message.len() > MESSAGE_LIMIT {
            let mut end = MESSAGE_LIMIT;
            while !shown.message.is_char_boundary(end) {
                end -= 1;
            }
            shown.message.truncate(end);
            shown.message.push_str("...");
        }
        serde_json::to_string(&shown).expect("a Readiness serializes")
    }

    /// Reads an annotation's value; an error says what is wrong with it.
    pub fn parse(value: &str) -> Result<Readiness, String> {
        let ready: Readiness = serde_json::from_str(value).map_err(|e| e.to_string())?;
        if ready.status != "True" && ready.status != "False" {
            return Err(format!(
                "status {:?} is neither True nor False",
                ready.status
            ));
        }
        if ready.secret_name.is_empty() || ready.reason.is_empty() {
            return Err("secretName and reason must not be empty".into());
        }
        ready.since()?;
        Ok(ready)
    }

    /// [`Readiness::since`] as an instant.
    pub fn since(&self) -> Result<SystemTime, String> {
        humantime::parse_rfc3339(&self.since)
            .map_err(|e| format!("since {:?} is not an RFC 3339 time: {e}", self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(message: &str) -> Readiness {
        Readiness {
            secret_name: "ecr-pull-secret".into(),
            status: "False".into(),
            reason: "CredentialsUnavailable".into(),
            message: message.into(),
            since: "2026-11-30T10:00:00Z".into(),
        }
    }

    #[test]
    fn round_trips_and_cuts_long_messages_on_a_character_boundary() {
        let v = verdict("the credentials Secret ecr/aws does not exist");
        assert_eq!(Readiness::parse(&v.to_annotation()).unwrap(), v);
        let long = verdict(&"é".repeat(2000));
        let read = Readiness::parse(&long.to_annotation()).unwrap();
        assert!(
            read.message.len() <= MESSAGE_LIMIT + 3,
            "{}",
            read.message.len()
        );
        assert!(read.message.ends_with("..."));
    }

    #[test]
    fn a_field_added_by_a_newer_controller_is_ignored_never_kept() {
        let value = r#"{"secretName":"s","status":"True","reason":"Synced","message":"m","since":"2026-11-30T10:00:00Z","token":"x"}"#;
        let read = Readiness::parse(value).unwrap();
        assert_eq!(read.reason, "Synced");
        assert!(!read.to_annotation().contains("token"));
    }

    #[test]
    fn a_foreign_value_is_refused_with_the_reason() {
        for (value, expected) in [
            ("", "EOF"),
            ("ready", "expected value"),
            (
                r#"{"secretName":"s","status":"Maybe","reason":"r","message":"","since":"2026-11-30T10:00:00Z"}"#,
                "neither True nor False",
            ),
            (
                r#"{"secretName":"s","status":"True","reason":"r","message":"","since":"yesterday"}"#,
                "not an RFC 3339 time",
            ),
            (
                r#"{"secretName":"","status":"True","reason":"r","message":"","since":"2026-11-30T10:00:00Z"}"#,
                "must not be empty",
            ),
        ] {
            let error = Readiness::parse(value).unwrap_err();
            assert!(error.contains(expected), "{value}: {error}");
        }
    }
}

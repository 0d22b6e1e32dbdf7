//! `ecr-pull-secrets status`: per namespace, the state of the pull secret (synced, missing,
//! outdated, expired, edited, conflict, orphaned, excluded, terminating), its registries, expiry
//! and our last write, plus who leads. Read-only.
//!
//! The reads are few and least-privileged: namespace metadata, the metadata of the Secrets with
//! our name (field selector, so the shipped `resourceNames` rule allows it; Secret data is never
//! fetched), ServiceAccounts only with `--service-accounts`, and the Lease. Everything else is
//! a pure function of what was read and the current time ([`Report::build`], [`table`]).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, ObjectList};
use kube::{Client, ResourceExt};
use serde::{Serialize, Serializer};

use crate::Error;
use crate::cli::args::{OutputFormat, StatusArgs};
use crate::core::api_failure::ApiFailure;
use crate::core::meta::{
    EXPIRES_ANNOTATION, FIELD_MANAGER, FINGERPRINT_ANNOTATION, MANAGED_LABEL, MANAGED_VALUE,
    REGISTRIES_ANNOTATION, edited_by_someone_else, ours,
};
use crate::core::readiness::{READY_ANNOTATION, Readiness};
use crate::core::selection::{Decision, Selection};
use crate::core::service_accounts::Targets;
use crate::core::time::{relative, rfc3339, span};
use crate::k8s::client::{api_message, call};

/// Exit code when the report is complete but some selected namespace is not in sync.
pub(crate) const EXIT_NOT_SYNCED: u8 = 3;

// ---------------------------------------------------------------------------------------------
// States

/// The state of one namespace's pull secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Ours, not expired, carrying the newest fingerprint among our Secrets.
    Synced,
    /// Ours, but an older config than the newest: a rotation has not reached it yet.
    Outdated,
    /// Ours, and its token has expired: pulls with it fail.
    Expired,
    /// Ours, but another field manager changed its data.
    Edited,
    /// Selected, and no Secret with our name.
    Missing,
    /// Selected, and a Secret with our name that is not ours ([`SecretView::managed`]): never
    /// touched.
    Conflict,
    /// Ours in a namespace that is not selected: the controller removes it.
    Orphaned,
    /// Not selected, and nothing of ours there.
    Excluded,
    /// The namespace is being deleted: the controller neither writes nor removes anything.
    Terminating,
}

impl State {
    pub(crate) const ALL: [State; 9] = [
        State::Synced,
        State::Outdated,
        State::Expired,
        State::Edited,
        State::Missing,
        State::Conflict,
        State::Orphaned,
        State::Excluded,
        State::Terminating,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Synced => "synced",
            State::Outdated => "outdated",
            State::Expired => "expired",
            State::Edited => "edited",
            State::Missing => "missing",
            State::Conflict => "conflict",
            State::Orphaned => "orphaned",
            State::Excluded => "excluded",
            State::Terminating => "terminating",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the metadata of a Secret with our name says (never its data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecretView {
    /// Ours as the controller decides it ([`ours`]): our managed label, set by our field
    /// manager, and no owner label (`status` shows the flag-configured secret).
    pub(crate) managed: bool,
    pub(crate) fingerprint: Option<String>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) registries: Vec<String>,
    /// The latest time our field manager wrote it (managedFields).
    pub(crate) last_write: Option<SystemTime>,
    /// Another field manager owns its data.
    pub(crate) edited: bool,
}

impl SecretView {
    pub(crate) fn of(meta: &ObjectMeta) -> SecretView {
        let annotation = |key: &str| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        SecretView {
            managed: ours(meta, None),
            fingerprint: annotation(FINGERPRINT_ANNOTATION).map(str::to_string),
            expires_at: annotation(EXPIRES_ANNOTATION)
                .and_then(|v| humantime::parse_rfc3339_weak(v).ok()),
            registries: annotation(REGISTRIES_ANNOTATION)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            last_write: meta
                .managed_fields
                .iter()
                .flatten()
                .filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER))
                .filter_map(|e| e.time.as_ref().map(|t| SystemTime::from(t.0)))
                .max(),
            edited: edited_by_someone_else(meta),
        }
    }
}

/// The fingerprint of the newest config among our Secrets: the latest expiry, and among equal
/// expiries (a registry change keeps the token) the latest write.
pub(crate) fn newest_fingerprint<'a>(
    secrets: impl IntoIterator<Item = &'a SecretView>,
) -> Option<&'a str> {
    secrets
        .into_iter()
        .filter(|s| s.managed)
        .filter_map(|s| Some(((s.expires_at, s.last_write), s.fingerprint.as_deref()?)))
        .max_by_key(|(key, _)| *key)
        .map(|(_, fingerprint)| fingerprint)
}

/// The state of one namespace, from the selection's decision, the Secret with our name there
/// (if any), the newest fingerprint among our Secrets, and the time.
pub(crate) fn classify(
    decision: Decision,
    secret: Option<&SecretView>,
    newest: Option<&str>,
    now: SystemTime,
) -> State {
    match (decision, secret) {
        (Decision::Terminating, _) => State::Terminating,
        (Decision::NotSelected(_), Some(s)) if s.managed => State::Orphaned,
        // A foreign Secret in a namespace we do not serve is none of our business.
        (Decision::NotSelected(_), _) => State::Excluded,
        (Decision::Selected, None) => State::Missing,
        (Decision::Selected, Some(s)) if !s.managed => State::Conflict,
        (Decision::Selected, Some(s)) if s.edited => State::Edited,
        (Decision::Selected, Some(s)) if s.expires_at.is_some_and(|e| e <= now) => State::Expired,
        (Decision::Selected, Some(s))
            if s.fingerprint.is_none() || s.fingerprint.as_deref() != newest =>
        {
            State::Outdated
        }
        (Decision::Selected, Some(_)) => State::Synced,
    }
}

/// ServiceAccounts of `targets` in a namespace that lack our entry, sorted. Only existing ones:
/// the controller never creates ServiceAccounts.
pub(crate) fn service_accounts_missing<'a>(
    targets: &Targets,
    accounts: impl IntoIterator<Item = &'a ServiceAccount>,
    secret_name: &str,
) -> Vec<String> {
    let mut missing: Vec<String> = accounts
        .into_iter()
        .filter(|sa| targets.matches(&sa.name_any()))
        .filter(|sa| {
            !sa.image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == secret_name)
        })
        .map(|sa| sa.name_any())
        .collect();
    missing.sort();
    missing
}

// ---------------------------------------------------------------------------------------------
// The report

/// What the API server returned; the input of [`Report::build`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) namespaces: Vec<ObjectMeta>,
    /// Metadata of every Secret with our name.
    pub(crate) secrets: Vec<ObjectMeta>,
    /// Every ServiceAccount, when `--service-accounts` is given.
    pub(crate) service_accounts: Option<(Targets, Vec<ServiceAccount>)>,
    /// `namespace/name` of the Lease looked at, and the Lease if it exists.
    pub(crate) lease: (String, Option<Lease>),
}

/// The report, as `--output json` prints it (camelCase, like Kubernetes). Field names and state
/// names are a documented interface (docs/operations.md): add, never rename.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub(crate) secret_name: String,
    /// `None` when there is no Lease.
    pub(crate) leader: Option<Leader>,
    /// The flag-configured secret's Ready verdict, as the leader publishes it on the Lease;
    /// `None` when none is published (or it is unreadable: see `ready_unreadable`).
    pub(crate) ready: Option<Ready>,
    /// Why the published verdict could not be read (table only).
    #[serde(skip)]
    pub(crate) ready_unreadable: Option<String>,
    /// Every namespace, sorted by name.
    pub(crate) namespaces: Vec<Row>,
    pub(crate) counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Leader {
    /// `namespace/name` of the Lease.
    pub(crate) lease: String,
    /// `None` when the lease was released and nobody took it yet.
    pub(crate) holder: Option<String>,
    #[serde(serialize_with = "time")]
    pub(crate) acquire_time: Option<SystemTime>,
    #[serde(serialize_with = "time")]
    pub(crate) renew_time: Option<SystemTime>,
    pub(crate) lease_duration_seconds: Option<i32>,
    pub(crate) lease_transitions: Option<i32>,
    /// Not renewed within its duration, by this machine's clock: nobody is leading.
    pub(crate) expired: bool,
}

/// The Ready condition the controller computes for its flag-configured secret, as an
/// EcrPullSecret's status carries it for the resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Ready {
    /// The controller's `--secret-name` (when it differs from this report's, the verdict is
    /// about another secret).
    pub(crate) secret_name: String,
    /// `True` or `False`.
    pub(crate) status: String,
    pub(crate) reason: String,
    pub(crate) message: String,
    #[serde(serialize_with = "time")]
    pub(crate) since: Option<SystemTime>,
    /// Published by a replica that no longer leads (the Lease was released or expired): it may
    /// be out of date.
    pub(crate) stale: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Row {
    pub(crate) namespace: String,
    pub(crate) selected: bool,
    /// Why not selected: `excluded`, `opt-out`, `not-included`, `label-selector`, `terminating`;
    /// `None` when selected.
    pub(crate) reason: Option<&'static str>,
    pub(crate) state: State,
    /// From the registries annotation of our Secret.
    pub(crate) registries: Vec<String>,
    #[serde(serialize_with = "time")]
    pub(crate) expires_at: Option<SystemTime>,
    /// When our field manager last wrote the Secret.
    #[serde(serialize_with = "time")]
    pub(crate) last_write: Option<SystemTime>,
    /// Target ServiceAccounts lacking our entry (selected namespaces only); `None` when
    /// `--service-accounts` was not given.
    pub(crate) service_accounts_missing: Option<Vec<String>>,
}

impl Row {
    /// Selected and not as it should be: this is what exit code 3 reports.
    pub(crate) fn needs_attention(&self) -> bool {
        self.selected
            && (self.state != State::Synced
                || self
                    .service_accounts_missing
                    .as_ref()
                    .is_some_and(|m| !m.is_empty()))
    }
}

/// Namespaces per state; every state is always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts(BTreeMap<State, usize>);

impl Counts {
    fn of(rows: &[Row]) -> Counts {
        let mut counts: BTreeMap<State, usize> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            *counts.entry(row.state).or_default() += 1;
        }
        Counts(counts)
    }

    pub(crate) fn get(&self, state: State) -> usize {
        self.0.get(&state).copied().unwrap_or(0)
    }
}

fn time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

impl Report {
    pub(crate) fn build(
        snapshot: &Snapshot,
        selection: &Selection,
        secret_name: &str,
        now: SystemTime,
    ) -> Report {
        let secrets: BTreeMap<String, SecretView> = snapshot
            .secrets
            .iter()
            .filter(|m| m.name.as_deref() == Some(secret_name))
            .filter_map(|m| Some((m.namespace.clone()?, SecretView::of(m))))
            .collect();
        let newest = newest_fingerprint(secrets.values());
        let mut namespaces: Vec<&ObjectMeta> = snapshot.namespaces.iter().collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        let empty = BTreeMap::new();
        let rows: Vec<Row> = namespaces
            .into_iter()
            .filter_map(|ns| {
                let name = ns.name.clone()?;
                let decision = selection.decide(
                    &name,
                    ns.labels.as_ref().unwrap_or(&empty),
                    ns.annotations.as_ref().unwrap_or(&empty),
                    ns.deletion_timestamp.is_some(),
                );
                let secret = secrets.get(&name);
                let state = classify(decision, secret, newest, now);
                let selected = decision == Decision::Selected;
                let ours = secret.filter(|s| s.managed);
                let service_accounts_missing =
                    snapshot.service_accounts.as_ref().map(|(targets, all)| {
                        if !selected {
                            return Vec::new();
                        }
                        let here = all
                            .iter()
                            .filter(|sa| sa.metadata.namespace.as_deref() == Some(name.as_str()));
                        service_accounts_missing(targets, here, secret_name)
                    });
                Some(Row {
                    selected,
                    reason: (!selected).then(|| decision.reason()),
                    state,
                    registries: ours.map(|s| s.registries.clone()).unwrap_or_default(),
                    expires_at: ours.and_then(|s| s.expires_at),
                    last_write: ours.and_then(|s| s.last_write),
                    service_accounts_missing,
                    namespace: name,
                })
            })
            .collect();
        let leader = leader(&snapshot.lease.0, snapshot.lease.1.as_ref(), now);
        let (ready, ready_unreadable) = match published(snapshot.lease.1.as_ref()) {
            None => (None, None),
            Some(Err(error)) => (None, Some(error)),
            Some(Ok(verdict)) => {
                let stale = leader
                    .as_ref()
                    .is_none_or(|l| l.expired || l.holder.is_none());
                let ready = Ready {
                    since: verdict.since().ok(),
                    secret_name: verdict.secret_name,
                    status: verdict.status,
                    reason: verdict.reason,
                    message: verdict.message,
                    stale,
                };
                (Some(ready), None)
            }
        };
        Report {
            secret_name: secret_name.to_string(),
            leader,
            ready,
            ready_unreadable,
            counts: Counts::of(&rows),
            namespaces: rows,
        }
    }

    /// Every selected namespace synced, with its ServiceAccount entries.
    pub(crate) fn in_sync(&self) -> bool {
        !self.namespaces.iter().any(Row::needs_attention)
    }

    /// 0 in sync, [`EXIT_NOT_SYNCED`] otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.in_sync() { 0 } else { EXIT_NOT_SYNCED }
    }
}

/// The verdict the leader published on the Lease, if any.
fn published(lease: Option<&Lease>) -> Option<Result<Readiness, String>> {
    let value = lease?
        .metadata
        .annotations
        .as_ref()?
        .get(READY_ANNOTATION)?;
    Some(Readiness::parse(value))
}

fn leader(lease_ref: &str, lease: Option<&Lease>, now: SystemTime) -> Option<Leader> {
    let spec = lease?.spec.clone().unwrap_or_default();
    let renew_time = spec.renew_time.map(|t| SystemTime::from(t.0));
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    Some(Leader {
        lease: lease_ref.to_string(),
        expired: holder.is_some() && renew_time.is_none_or(|r| r + duration < now),
        holder,
        acquire_time: spec.acquire_time.map(|t| SystemTime::from(t.0)),
        renew_time,
        lease_duration_seconds: spec.lease_duration_seconds,
        lease_transitions: spec.lease_transitions,
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn expiry(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(ahead) if !ahead.is_zero() => format!("{} (in {})", rfc3339(t), span(ahead)),
        _ => format!(
            "{} (expired {} ago)",
            rfc3339(t),
            span(now.duration_since(t).unwrap_or_default())
        ),
    }
}

/// The report for people: a header with the leader, a row per namespace, counts and, for each
/// problem seen, what it means and what to do.
pub(crate) fn table(report: &Report, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Secret: {}", report.secret_name);
    let _ = writeln!(out, "Leader: {}", leader_line(report, now));
    let _ = writeln!(out, "Ready: {}", ready_line(report, now));
    let _ = writeln!(out);
    let with_accounts = report
        .namespaces
        .iter()
        .any(|r| r.service_accounts_missing.is_some());
    let mut header = vec![
        "NAMESPACE",
        "SELECTED",
        "STATE",
        "REGISTRIES",
        "EXPIRES",
        "LAST WRITE",
    ];
    if with_accounts {
        header.push("SA MISSING");
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = report
        .namespaces
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.namespace.clone(),
                if r.selected {
                    "yes".to_string()
                } else {
                    format!("no ({})", r.reason.unwrap_or("-"))
                },
                r.state.to_string(),
                if r.registries.is_empty() {
                    dash()
                } else {
                    r.registries.join(",")
                },
                r.expires_at.map(|t| expiry(t, now)).unwrap_or_else(dash),
                r.last_write
                    .map(|t| format!("{} ({})", rfc3339(t), relative(t, now)))
                    .unwrap_or_else(dash),
            ];
            if with_accounts {
                cells.push(match &r.service_accounts_missing {
                    Some(m) if !m.is_empty() => m.join(","),
                    _ => dash(),
                });
            }
            cells
        })
        .collect();
    columns(&mut out, &header, &rows);
    let _ = writeln!(out);
    let counted: Vec<String> = State::ALL
        .iter()
        .filter(|s| report.counts.get(**s) > 0)
        .map(|s| format!("{} {s}", report.counts.get(*s)))
        .collect();
    let selected = report.namespaces.iter().filter(|r| r.selected).count();
    let _ = writeln!(
        out,
        "{} namespaces, {selected} selected: {}",
        report.namespaces.len(),
        if counted.is_empty() {
            "none".to_string()
        } else {
            counted.join(", ")
        }
    );
    for line in hints(report) {
        let _ = writeln!(out, "{line}");
    }
    out
}

fn leader_line(report: &Report, now: SystemTime) -> String {
    let Some(leader) = &report.leader else {
        return "none: no Lease found; is the controller running? Pass the --lease-name and \
                --lease-namespace (or --namespace) it runs with"
            .to_string();
    };
    let renewed = leader
        .renew_time
        .map(|t| format!("renewed {} ({})", rfc3339(t), relative(t, now)))
        .unwrap_or_else(|| "never renewed".to_string());
    match &leader.holder {
        None => format!(
            "none: Lease {} released, {renewed}; nobody refreshes tokens",
            leader.lease
        ),
        Some(holder) if leader.expired => format!(
            "none: Lease {} of {holder} expired, {renewed}, duration {}s; nobody refreshes tokens",
            leader.lease,
            leader.lease_duration_seconds.unwrap_or(15)
        ),
        Some(holder) => {
            let since = leader
                .acquire_time
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!(", leading for {}", span(d)))
                .unwrap_or_default();
            format!("{holder} (Lease {}), {renewed}{since}", leader.lease)
        }
    }
}

fn ready_line(report: &Report, now: SystemTime) -> String {
    if let Some(error) = &report.ready_unreadable {
        return format!(
            "unknown: the Lease's annotation {READY_ANNOTATION} is not the controller's ({error}); \
             the leader rewrites it within seconds"
        );
    }
    let Some(ready) = &report.ready else {
        return "not published: no replica leads with a flag-configured secret (--secret-name), \
                or it leads only EcrPullSecrets (see their status)"
            .to_string();
    };
    if ready.secret_name != report.secret_name {
        return format!(
            "not published for {}: the controller's flag-configured secret is {} (pass \
             --secret-name {})",
            report.secret_name, ready.secret_name, ready.secret_name
        );
    }
    let since = ready
        .since
        .map(|t| format!(" since {} ({})", rfc3339(t), relative(t, now)))
        .unwrap_or_default();
    let stale = if ready.stale {
        "; published by a replica that no longer leads, so it may be out of date"
    } else {
        ""
    };
    format!(
        "{} ({}){since}: {}{stale}",
        ready.status, ready.reason, ready.message
    )
}

/// What a problem state means and what to do, shown under the table when it occurs.
fn hint(state: State, secret_name: &str) -> Option<String> {
    let text = match state {
        State::Synced | State::Excluded | State::Terminating => return None,
        State::Missing => "missing: no Secret yet; check that the controller runs and leads \
                           (Leader above) and its log for `reconcile failed`"
            .to_string(),
        State::Outdated => "outdated: an older token or registry set than the newest; a \
                            rotation finishes within seconds, else check the controller's log"
            .to_string(),
        State::Expired => "expired: pulls with this secret fail; check the leader's log for \
                           `token refresh failed` (AWS access), and that someone leads"
            .to_string(),
        State::Edited => "edited: another field manager changed the data; a running controller \
                          restores it within a second"
            .to_string(),
        State::Conflict => format!(
            "conflict: a Secret {secret_name} that is not ours (no label \
             {MANAGED_LABEL}={MANAGED_VALUE} set by the controller, or another EcrPullSecret's) \
             is left untouched; delete it, choose another --secret-name, or run with \
             --adopt-existing"
        ),
        State::Orphaned => "orphaned: ours in a namespace that is not selected; a controller \
                            running with these selection flags removes it (different flags here \
                            than in `run`?)"
            .to_string(),
    };
    Some(text)
}

fn hints(report: &Report) -> Vec<String> {
    let mut hints: Vec<String> = State::ALL
        .into_iter()
        .filter(|s| report.counts.get(*s) > 0)
        .filter_map(|s| hint(s, &report.secret_name))
        .collect();
    let accounts_missing = report.namespaces.iter().any(|r| {
        r.service_accounts_missing
            .as_ref()
            .is_some_and(|m| !m.is_empty())
    });
    if accounts_missing {
        hints.push(format!(
            "SA MISSING: these ServiceAccounts lack {} in imagePullSecrets; a running controller \
             started with the same --service-accounts adds it",
            report.secret_name
        ));
    }
    hints
}

/// Left-aligned columns two spaces apart, without trailing blanks.
fn columns(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// The report as one pretty-printed JSON object.
pub(crate) fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("the report serializes")
}

// ---------------------------------------------------------------------------------------------
// Reading (thin I/O)

/// Reads, builds and prints the report. `Ok` also when namespaces are not in sync: see
/// [`Report::exit_code`].
pub async fn status(args: &StatusArgs) -> Result<Report, Error> {
    let selection = args.selection.to_selection().map_err(Error::Config)?;
    let client = crate::k8s::client::connect().await?;
    let snapshot = observe(&client, args).await?;
    let now = SystemTime::now();
    let report = Report::build(&snapshot, &selection, &args.secret.secret_name, now);
    let text = match args.output {
        OutputFormat::Table => table(&report, now),
        OutputFormat::Json => json(&report) + "\n",
    };
    // A closed pipe (`status | head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(report)
}

const PAGE: u32 = 500;

/// The reads: namespace metadata, the metadata of Secrets with our name, ServiceAccounts (only
/// with `--service-accounts`), the Lease.
pub(crate) async fn observe(client: &Client, args: &StatusArgs) -> Result<Snapshot, Error> {
    let timeout = args.client.api_timeout;
    let name = &args.secret.secret_name;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespaces = pages(
        timeout,
        "list namespaces",
        "`list` on namespaces (cluster-wide), as the ClusterRole in deploy/common.yaml grants",
        ListParams::default(),
        |p| {
            let api = namespaces.clone();
            async move { api.list_metadata(&p).await }
        },
    )
    .await?;

    // Metadata only: Secret data never leaves the API server. The field selector makes the
    // list pass a `resourceNames` rule.
    let secrets: Api<Secret> = Api::all(client.clone());
    let secrets = pages(
        timeout,
        &format!("list Secrets named {name}"),
        &format!(
            "`list` on secrets with resourceNames [{name}] (the ClusterRole in deploy/common.yaml; \
             if --secret-name is not its resourceNames, change them to match)"
        ),
        ListParams::default().fields(&format!("metadata.name={name}")),
        |p| {
            let api = secrets.clone();
            async move { api.list_metadata(&p).await }
        },
    )
    .await?;

    let service_accounts = match &args.selection.service_accounts {
        Some(targets) => {
            let api: Api<ServiceAccount> = Api::all(client.clone());
            let all = pages(
                timeout,
                "list ServiceAccounts",
                "`list` on serviceaccounts (cluster-wide), as the ClusterRole in \
                 deploy/common.yaml grants; or leave out --service-accounts",
                ListParams::default(),
                |p| {
                    let api = api.clone();
                    async move { api.list(&p).await }
                },
            )
            .await?;
            Some((targets.clone(), all))
        }
        None => None,
    };

    let lease_namespace = args
        .lease
        .lease_namespace
        .clone()
        .or_else(|| args.lease.namespace.clone())
        .unwrap_or_else(|| client.default_namespace().to_string());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_namespace);
    let lease_ref = format!("{lease_namespace}/{}", args.lease.lease_name);
    let lease = bounded(
        timeout,
        &format!("get Lease {lease_ref}"),
        &format!(
            "`get` on leases named {} in namespace {lease_namespace} (the Role in \
             deploy/common.yaml); or pass the --lease-namespace and --lease-name the controller \
             runs with",
            args.lease.lease_name
        ),
        leases.get_opt(&args.lease.lease_name),
    )
    .await?;

    Ok(Snapshot {
        namespaces: namespaces.into_iter().map(|n| n.metadata).collect(),
        secrets: secrets.into_iter().map(|s| s.metadata).collect(),
        service_accounts,
        lease: (lease_ref, lease),
    })
}

/// Every page of a list, each call under the deadline.
async fn pages<T, F, Fut>(
    timeout: Duration,
    what: &str,
    permission: &str,
    params: ListParams,
    mut list: F,
) -> Result<Vec<T>, Error>
where
    T: Clone,
    F: FnMut(ListParams) -> Fut,
    Fut: Future<Output = Result<ObjectList<T>, kube::Error>>,
{
    let mut items = Vec::new();
    let mut params = params.limit(PAGE);
    loop {
        let page = bounded(timeout, what, permission, list(params.clone())).await?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// One API call under the deadline; a 403 names the permission needed and where it comes from.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    permission: &str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    const HINT: &str = "; check KUBECONFIG and connectivity, or raise --api-timeout";
    match call(|| what.to_string(), timeout, HINT, request).await {
        Err(Error::Kube {
            failure: ApiFailure::Forbidden,
            source,
            ..
        }) => Err(Error::Config(format!(
            "not allowed to {what} ({}); status needs {permission}",
            api_message(&source)
        ))),
        Err(Error::Kube { source, .. }) => Err(Error::kube(
            format!(
                "cannot {what} (check KUBECONFIG or the in-cluster configuration, and that the \
                 API server is reachable)"
            ),
            source,
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::selection::FLAGS;
    use clap::Parser;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::LocalObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, MicroTime, Time,
    };
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    use crate::cli::args::{Cli, Command};

    const SECRET: &str = "ecr-pull-secret";
    const HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

    /// 2027-01-15T08:00:00Z plus `secs`.
    fn t(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs((1_800_000_000 + secs) as u64)
    }

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn entry(manager: &str, at: i64, data: bool) -> ManagedFieldsEntry {
        // A write of the data is an apply of the whole Secret: label and data together.
        let fields = if data {
            json!({
                "f:data": {"f:.dockerconfigjson": {}},
                "f:metadata": {"f:labels": {format!("f:{MANAGED_LABEL}"): {}}},
            })
        } else {
            json!({"f:metadata": {"f:annotations": {}}})
        };
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            time: Some(Time(ts(at))),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    /// Metadata of our Secret in `ns`: fingerprint, expiry (seconds from t0), written at `wrote`.
    fn ours(ns: &str, fingerprint: &str, expires: i64, wrote: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(ns.into()),
            labels: map(&[(MANAGED_LABEL, MANAGED_VALUE)]),
            annotations: map(&[
                (FINGERPRINT_ANNOTATION, fingerprint),
                (EXPIRES_ANNOTATION, &rfc3339(t(expires))),
                (REGISTRIES_ANNOTATION, HOST),
            ]),
            managed_fields: Some(vec![entry(FIELD_MANAGER, wrote, true)]),
            ..ObjectMeta::default()
        }
    }

    fn foreign(ns: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(ns.into()),
            managed_fields: Some(vec![entry("kubectl-create", 0, true)]),
            ..ObjectMeta::default()
        }
    }

    fn ns(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    fn account(ns: &str, name: &str, pull_secrets: &[&str]) -> ServiceAccount {
        ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
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

    fn lease(holder: Option<&str>, acquired: i64, renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                acquire_time: Some(MicroTime(ts(acquired))),
                renew_time: Some(MicroTime(ts(renewed))),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn selection(exclude: &[&str]) -> Selection {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        Selection::new(&FLAGS, &[], &exclude, None).unwrap()
    }

    #[test]
    fn spans_and_relative_times() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (60, "1m"),
            (5 * 60 + 59, "5m"),
            (3600, "1h"),
            (11 * 3600 + 58 * 60 + 30, "11h58m"),
            (86_400, "1d"),
            (2 * 86_400 + 3 * 3600 + 59 * 60, "2d3h"),
        ];
        for (secs, expected) in cases {
            assert_eq!(span(Duration::from_secs(secs)), expected, "{secs}");
        }
        assert_eq!(relative(t(43_080), t(0)), "in 11h58m");
        assert_eq!(relative(t(-300), t(0)), "5m ago");
        assert_eq!(expiry(t(43_080), t(0)), "2027-01-15T19:58:00Z (in 11h58m)");
        assert_eq!(
            expiry(t(-300), t(0)),
            "2027-01-15T07:55:00Z (expired 5m ago)"
        );
        assert_eq!(expiry(t(0), t(0)), "2027-01-15T08:00:00Z (expired 0s ago)");
    }

    #[test]
    fn a_secret_is_read_from_its_metadata() {
        let mut meta = ours("a", "fp", 3600, 10);
        let managed = meta.managed_fields.as_mut().unwrap();
        // An older write of ours, and another manager touching only annotations.
        managed.push(entry(FIELD_MANAGER, 5, false));
        managed.push(entry("kubectl-annotate", 20, false));
        meta.annotations.as_mut().unwrap().insert(
            REGISTRIES_ANNOTATION.into(),
            format!("{HOST}, public.ecr.aws,"),
        );
        let view = SecretView::of(&meta);
        assert_eq!(
            view,
            SecretView {
                managed: true,
                fingerprint: Some("fp".into()),
                expires_at: Some(t(3600)),
                registries: vec![HOST.into(), "public.ecr.aws".into()],
                last_write: Some(t(10)),
                edited: false,
            }
        );
        // Another manager owning the data is an edit.
        meta.managed_fields
            .as_mut()
            .unwrap()
            .push(entry("kubectl-edit", 30, true));
        assert!(SecretView::of(&meta).edited);
        // Foreign, and bare metadata: nothing made up.
        let view = SecretView::of(&foreign("a"));
        assert!(!view.managed && view.fingerprint.is_none() && view.last_write.is_none());
        assert_eq!(SecretView::of(&ns("x")), SecretView::default());
        let mut bad = ours("a", "fp", 0, 0);
        bad.annotations
            .as_mut()
            .unwrap()
            .insert(EXPIRES_ANNOTATION.into(), "soon".into());
        assert_eq!(SecretView::of(&bad).expires_at, None);
    }

    /// `status` and the controller share one definition of "ours" (`core::meta::ours`), where
    /// they used to disagree: another EcrPullSecret's Secret with the same name, or our label
    /// set by someone else (kubectl), is a conflict for both.
    #[test]
    fn ours_is_the_controllers_definition() {
        let mut other_resource = ours("a", "fp", 3600, 10);
        other_resource
            .labels
            .as_mut()
            .unwrap()
            .insert(crate::core::meta::OWNER_LABEL.into(), "team-b".into());
        let mut copied_label = ours("a", "fp", 3600, 10);
        copied_label.managed_fields = Some(vec![entry("kubectl-create", 10, true)]);
        for meta in [other_resource, copied_label] {
            let view = SecretView::of(&meta);
            assert!(!view.managed);
            assert!(!crate::core::meta::ours(&meta, None));
            assert_eq!(
                crate::k8s::secret_cache::CachedSecret::from_meta(&meta, None).managed,
                view.managed
            );
            assert_eq!(
                classify(Decision::Selected, Some(&view), Some("fp"), t(0)),
                State::Conflict
            );
        }
        assert!(SecretView::of(&ours("a", "fp", 3600, 10)).managed);
    }

    #[test]
    fn newest_is_the_latest_expiry_then_the_latest_write() {
        let views = |metas: &[ObjectMeta]| -> Vec<SecretView> {
            metas.iter().map(SecretView::of).collect()
        };
        let rotated = views(&[ours("a", "old", 100, 0), ours("b", "new", 200, 50)]);
        assert_eq!(newest_fingerprint(&rotated), Some("new"));
        // Same token, new registries: the later write wins.
        let rewritten = views(&[ours("a", "late", 100, 60), ours("b", "early", 100, 50)]);
        assert_eq!(newest_fingerprint(&rewritten), Some("late"));
        // Foreign Secrets never count.
        let mut with_foreign = views(&[ours("a", "ours", 100, 0)]);
        let mut fake = SecretView::of(&ours("b", "fake", 900, 900));
        fake.managed = false;
        with_foreign.push(fake);
        assert_eq!(newest_fingerprint(&with_foreign), Some("ours"));
        assert_eq!(newest_fingerprint(&[]), None);
    }

    #[test]
    fn classification_table() {
        let now = t(0);
        let view =
            |fingerprint: Option<&str>, expires: i64, managed: bool, edited: bool| SecretView {
                managed,
                fingerprint: fingerprint.map(str::to_string),
                expires_at: Some(t(expires)),
                edited,
                ..SecretView::default()
            };
        let synced = view(Some("new"), 3600, true, false);
        let old = view(Some("old"), 1800, true, false);
        let expired = view(Some("new"), -1, true, false);
        let edited = view(Some("new"), 3600, true, true);
        let unmarked = view(None, 3600, true, false);
        let theirs = view(None, 3600, false, false);
        let (sel, out, term) = (
            Decision::Selected,
            Decision::NotSelected("excluded"),
            Decision::Terminating,
        );
        let cases: [(Decision, Option<&SecretView>, State); 14] = [
            (sel, Some(&synced), State::Synced),
            (sel, Some(&old), State::Outdated),
            (sel, Some(&unmarked), State::Outdated),
            (sel, Some(&expired), State::Expired),
            (sel, Some(&edited), State::Edited),
            (sel, None, State::Missing),
            (sel, Some(&theirs), State::Conflict),
            (out, Some(&synced), State::Orphaned),
            (out, Some(&expired), State::Orphaned),
            (out, None, State::Excluded),
            (out, Some(&theirs), State::Excluded),
            (term, Some(&synced), State::Terminating),
            (term, Some(&theirs), State::Terminating),
            (term, None, State::Terminating),
        ];
        for (i, (decision, secret, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                classify(decision, secret, Some("new"), now),
                expected,
                "case {i}: {decision:?} {secret:?}"
            );
        }
        // An expired edit is reported as the edit (the controller restores it first).
        let both = view(Some("old"), -1, true, true);
        assert_eq!(classify(sel, Some(&both), Some("new"), now), State::Edited);
    }

    #[test]
    fn service_accounts_lacking_our_entry() {
        let accounts = [
            account("a", "default", &["other", SECRET]),
            account("a", "builder", &["other"]),
            account("a", "deployer", &[]),
        ];
        let names: Targets = "default,builder,absent".parse().unwrap();
        assert_eq!(
            service_accounts_missing(&names, &accounts, SECRET),
            ["builder"]
        );
        assert_eq!(
            service_accounts_missing(&Targets::All, &accounts, SECRET),
            ["builder", "deployer"]
        );
    }

    /// One namespace per state, and a lease held by `pod-1` since 3 h, renewed 1 s ago.
    fn snapshot() -> Snapshot {
        let mut edited = ours("edited", "new", 3600, -60);
        edited
            .managed_fields
            .as_mut()
            .unwrap()
            .push(entry("kubectl-edit", -30, true));
        let mut terminating = ns("terminating");
        terminating.deletion_timestamp = Some(Time(ts(-10)));
        let mut opted_out = ns("opted-out");
        opted_out.annotations = map(&[("ecr-pull-secrets.io/exclude", "true")]);
        Snapshot {
            namespaces: [
                "synced",
                "outdated",
                "expired",
                "missing",
                "conflict",
                "edited",
                "kube-system",
                "orphaned",
            ]
            .into_iter()
            .map(ns)
            .chain([terminating, opted_out])
            .collect(),
            secrets: vec![
                ours("synced", "new", 3600, -120),
                ours("outdated", "old", 1800, -3000),
                ours("expired", "new", -300, -43_500),
                foreign("conflict"),
                edited,
                ours("orphaned", "new", 3600, -120),
                ours("terminating", "new", 3600, -120),
                foreign("kube-system"),
                // A namespace created after the namespace list: not shown.
                ours("later", "new", 3600, -1),
            ],
            service_accounts: Some((
                "default".parse().unwrap(),
                vec![
                    account("synced", "default", &[SECRET]),
                    account("missing", "default", &[]),
                    account("orphaned", "default", &[]),
                ],
            )),
            lease: (
                "ecr-pull-secrets/ecr-pull-secrets".into(),
                Some(lease(Some("pod-1"), -10_800, -1)),
            ),
        }
    }

    fn report() -> Report {
        Report::build(
            &snapshot(),
            &selection(&["kube-*", "orphaned"]),
            SECRET,
            t(0),
        )
    }

    #[test]
    fn every_state_in_one_report() {
        let report = report();
        let states: Vec<(&str, State, Option<&str>)> = report
            .namespaces
            .iter()
            .map(|r| (r.namespace.as_str(), r.state, r.reason))
            .collect();
        assert_eq!(
            states,
            [
                ("conflict", State::Conflict, None),
                ("edited", State::Edited, None),
                ("expired", State::Expired, None),
                ("kube-system", State::Excluded, Some("excluded")),
                ("missing", State::Missing, None),
                ("opted-out", State::Excluded, Some("opt-out")),
                ("orphaned", State::Orphaned, Some("excluded")),
                ("outdated", State::Outdated, None),
                ("synced", State::Synced, None),
                ("terminating", State::Terminating, Some("terminating")),
            ]
        );
        for state in State::ALL {
            let expected = if state == State::Excluded { 2 } else { 1 };
            assert_eq!(report.counts.get(state), expected, "{state}");
        }
        let row = |name: &str| {
            report
                .namespaces
                .iter()
                .find(|r| r.namespace == name)
                .unwrap()
        };
        assert_eq!(row("synced").registries, [HOST]);
        assert_eq!(row("synced").expires_at, Some(t(3600)));
        assert_eq!(row("synced").last_write, Some(t(-120)));
        assert_eq!(row("synced").service_accounts_missing, Some(vec![]));
        assert_eq!(
            row("missing").service_accounts_missing,
            Some(vec!["default".to_string()])
        );
        // Only selected namespaces are checked for entries.
        assert_eq!(row("orphaned").service_accounts_missing, Some(vec![]));
        // Nothing of a foreign Secret is shown.
        assert!(row("conflict").registries.is_empty() && row("conflict").last_write.is_none());
        assert_eq!(report.exit_code(), EXIT_NOT_SYNCED);
    }

    #[test]
    fn exit_code_is_zero_only_when_every_selected_namespace_is_synced() {
        let mut snapshot = snapshot();
        snapshot.namespaces = ["synced", "kube-system", "orphaned", "terminating"]
            .into_iter()
            .map(ns)
            .collect();
        let all = selection(&["kube-*", "orphaned"]);
        let build = |s: &Snapshot| Report::build(s, &all, SECRET, t(0));
        // Orphans, foreign Secrets in excluded namespaces and terminating ones do not count.
        assert_eq!(build(&snapshot).exit_code(), 0);
        // A target ServiceAccount without our entry does.
        snapshot
            .service_accounts
            .as_mut()
            .unwrap()
            .1
            .push(account("synced", "default-2", &[]));
        snapshot.service_accounts.as_mut().unwrap().0 = Targets::All;
        assert_eq!(build(&snapshot).exit_code(), EXIT_NOT_SYNCED);
        snapshot.service_accounts = None;
        let report = build(&snapshot);
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.namespaces[0].service_accounts_missing, None);
        // The same Secret, after its expiry.
        let later = Report::build(&snapshot, &all, SECRET, t(3600));
        assert_eq!(later.exit_code(), EXIT_NOT_SYNCED);
        // Nothing selected: nothing out of sync.
        snapshot.namespaces = vec![ns("kube-system")];
        assert_eq!(build(&snapshot).exit_code(), 0);
    }

    #[test]
    fn json_is_the_documented_shape() {
        let value: Value = serde_json::from_str(&json(&report())).unwrap();
        assert_eq!(value["secretName"], SECRET);
        assert_eq!(
            value["leader"],
            json!({
                "lease": "ecr-pull-secrets/ecr-pull-secrets",
                "holder": "pod-1",
                "acquireTime": "2027-01-15T05:00:00Z",
                "renewTime": "2027-01-15T07:59:59Z",
                "leaseDurationSeconds": 15,
                "leaseTransitions": 2,
                "expired": false,
            })
        );
        let rows = value["namespaces"].as_array().unwrap();
        let row = |name: &str| rows.iter().find(|r| r["namespace"] == name).unwrap();
        assert_eq!(
            row("synced"),
            &json!({
                "namespace": "synced",
                "selected": true,
                "reason": null,
                "state": "synced",
                "registries": [HOST],
                "expiresAt": "2027-01-15T09:00:00Z",
                "lastWrite": "2027-01-15T07:58:00Z",
                "serviceAccountsMissing": [],
            })
        );
        assert_eq!(
            row("kube-system"),
            &json!({
                "namespace": "kube-system",
                "selected": false,
                "reason": "excluded",
                "state": "excluded",
                "registries": [],
                "expiresAt": null,
                "lastWrite": null,
                "serviceAccountsMissing": [],
            })
        );
        assert_eq!(row("missing")["serviceAccountsMissing"], json!(["default"]));
        assert_eq!(
            value["counts"],
            json!({
                "synced": 1, "outdated": 1, "expired": 1, "edited": 1, "missing": 1,
                "conflict": 1, "orphaned": 1, "excluded": 2, "terminating": 1,
            })
        );
        assert_eq!(value["ready"], Value::Null, "no verdict published");
        // No Lease: null.
        let mut snapshot = snapshot();
        snapshot.lease.1 = None;
        let report = Report::build(&snapshot, &selection(&[]), SECRET, t(0));
        let value: Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(value["leader"], Value::Null);
    }

    #[test]
    fn table_for_people() {
        let mut snapshot = snapshot();
        snapshot.namespaces.retain(|n| {
            ["synced", "missing", "conflict", "kube-system", "orphaned"]
                .contains(&n.name.as_deref().unwrap())
        });
        let report = Report::build(&snapshot, &selection(&["kube-*", "orphaned"]), SECRET, t(0));
        let expected = "\
Secret: ecr-pull-secret
Leader: pod-1 (Lease ecr-pull-secrets/ecr-pull-secrets), renewed 2027-01-15T07:59:59Z (1s ago), leading for 3h
Ready: not published: no replica leads with a flag-configured secret (--secret-name), or it leads only EcrPullSecrets (see their status)

NAMESPACE    SELECTED       STATE     REGISTRIES                                    EXPIRES                       LAST WRITE                     SA MISSING
conflict     yes            conflict  -                                             -                             -                              -
kube-system  no (excluded)  excluded  -                                             -                             -                              -
missing      yes            missing   -                                             -                             -                              default
orphaned     no (excluded)  orphaned  123456789012.dkr.ecr.eu-west-1.amazonaws.com  2027-01-15T09:00:00Z (in 1h)  2027-01-15T07:58:00Z (2m ago)  -
synced       yes            synced    123456789012.dkr.ecr.eu-west-1.amazonaws.com  2027-01-15T09:00:00Z (in 1h)  2027-01-15T07:58:00Z (2m ago)  -

5 namespaces, 3 selected: 1 synced, 1 missing, 1 conflict, 1 orphaned, 1 excluded
missing: no Secret yet; check that the controller runs and leads (Leader above) and its log for `reconcile failed`
conflict: a Secret ecr-pull-secret that is not ours (no label app.kubernetes.io/managed-by=ecr-pull-secrets set by the controller, or another EcrPullSecret's) is left untouched; delete it, choose another --secret-name, or run with --adopt-existing
orphaned: ours in a namespace that is not selected; a controller running with these selection flags removes it (different flags here than in `run`?)
SA MISSING: these ServiceAccounts lack ecr-pull-secret in imagePullSecrets; a running controller started with the same --service-accounts adds it
";
        assert_eq!(table(&report, t(0)), expected);
        // Never a token: the table and the JSON show metadata only.
        assert!(!json(&report).contains("dockerconfigjson"));
    }

    #[test]
    fn leader_lines() {
        let line = |lease: Option<Lease>, now: i64| {
            let snapshot = Snapshot {
                lease: ("ns/l".into(), lease),
                ..Snapshot::default()
            };
            let report = Report::build(&snapshot, &selection(&[]), SECRET, t(now));
            (leader_line(&report, t(now)), report.leader)
        };
        let (text, leader) = line(None, 0);
        assert!(text.starts_with("none: no Lease found"), "{text}");
        assert!(text.contains("--lease-namespace"), "{text}");
        assert_eq!(leader, None);
        let (text, leader) = line(Some(lease(None, -100, -5)), 0);
        assert!(text.starts_with("none: Lease ns/l released"), "{text}");
        assert!(!leader.unwrap().expired);
        let (text, leader) = line(Some(lease(Some("pod-1"), -100, -16)), 0);
        assert!(
            text.starts_with("none: Lease ns/l of pod-1 expired"),
            "{text}"
        );
        assert!(leader.unwrap().expired);
        let (text, leader) = line(Some(lease(Some("pod-1"), -100, -2)), 0);
        assert_eq!(
            text,
            "pod-1 (Lease ns/l), renewed 2027-01-15T07:59:58Z (2s ago), leading for 1m"
        );
        assert!(!leader.unwrap().expired);
    }

    /// The verdict the leader publishes on the Lease: shown when it is about this secret,
    /// marked stale when its publisher no longer leads, and a foreign value is named, not shown.
    #[test]
    fn the_published_ready_verdict() {
        let published = |holder: Option<&str>, renewed: i64, value: &str| {
            let mut lease = lease(holder, -100, renewed);
            lease.metadata.annotations = map(&[(READY_ANNOTATION, value)]);
            let snapshot = Snapshot {
                lease: ("ns/l".into(), Some(lease)),
                ..Snapshot::default()
            };
            let report = Report::build(&snapshot, &selection(&[]), SECRET, t(0));
            let value: Value = serde_json::from_str(&json(&report)).unwrap();
            (ready_line(&report, t(0)), value["ready"].clone())
        };
        let verdict = |secret: &str| {
            Readiness {
                secret_name: secret.into(),
                status: "False".into(),
                reason: "CredentialsUnavailable".into(),
                message: "the credentials Secret ns/aws does not exist".into(),
                since: rfc3339(t(-300)),
            }
            .to_annotation()
        };
        let (line, value) = published(Some("pod-1"), -1, &verdict(SECRET));
        assert_eq!(
            line,
            "False (CredentialsUnavailable) since 2027-01-15T07:55:00Z (5m ago): the credentials \
             Secret ns/aws does not exist"
        );
        assert_eq!(
            value,
            json!({
                "secretName": SECRET,
                "status": "False",
                "reason": "CredentialsUnavailable",
                "message": "the credentials Secret ns/aws does not exist",
                "since": "2027-01-15T07:55:00Z",
                "stale": false,
            })
        );
        // Its publisher's lease expired, or was released: said, since it may be out of date.
        for (holder, renewed) in [(Some("pod-1"), -16), (None, -1)] {
            let (line, value) = published(holder, renewed, &verdict(SECRET));
            assert!(
                line.ends_with("no longer leads, so it may be out of date"),
                "{line}"
            );
            assert_eq!(value["stale"], true);
        }
        // About another secret: not shown as this one's.
        let (line, value) = published(Some("pod-1"), -1, &verdict("other"));
        assert_eq!(
            line,
            "not published for ecr-pull-secret: the controller's flag-configured secret is other \
             (pass --secret-name other)"
        );
        assert_eq!(value["secretName"], "other");
        // Anything else in the annotation: named, never printed as a verdict.
        let (line, value) = published(Some("pod-1"), -1, "all good");
        assert!(
            line.starts_with("unknown: the Lease's annotation ecr-pull-secrets.io/ready is not the controller's (expected"),
            "{line}"
        );
        assert_eq!(value, Value::Null);
    }

    // -----------------------------------------------------------------------------------------
    // The reads, against a scripted API server.

    use http::{Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    type ApiServer = mock::Handle<Request<Body>, Response<Body>>;

    fn args(extra: &[&str]) -> StatusArgs {
        let mut argv = vec![
            "ecr-pull-secrets",
            "status",
            "--secret-name",
            SECRET,
            "--namespace",
            "ecr-pull-secrets",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Status(args) => args,
            _ => panic!("not status"),
        }
    }

    fn respond(status: u16, body: Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn metadata_list(items: Value, next: Option<&str>) -> Response<Body> {
        respond(
            200,
            json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadataList",
                "metadata": {"continue": next.unwrap_or("")},
                "items": items,
            }),
        )
    }

    fn refused(code: u16, message: &str) -> Response<Body> {
        let reason = if code == 404 { "NotFound" } else { "Forbidden" };
        respond(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                   "reason": reason, "message": message}),
        )
    }

    /// Answers the next request after checking its path and query; returns its Accept header.
    async fn expect(
        server: &mut ApiServer,
        path: &str,
        query: &[&str],
        answer: Response<Body>,
    ) -> String {
        let (request, send) = server.next_request().await.expect("a request");
        assert_eq!(request.method(), "GET");
        assert_eq!(request.uri().path(), path);
        let actual = request.uri().query().unwrap_or_default().to_string();
        for q in query {
            assert!(actual.split('&').any(|a| a == *q), "{path}?{actual}: {q}");
        }
        let accept = request
            .headers()
            .get("accept")
            .map(|a| a.to_str().unwrap().to_string())
            .unwrap_or_default();
        send.send_response(answer);
        accept
    }

    #[tokio::test]
    async fn reads_metadata_only_and_only_what_the_flags_need() {
        let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let reads = tokio::spawn(async move { observe(&client, &args(&[])).await });
        // Namespaces, two pages.
        let accept = expect(
            &mut server,
            "/api/v1/namespaces",
            &["limit=500"],
            metadata_list(json!([{"metadata": {"name": "a"}}]), Some("page-2")),
        )
        .await;
        assert!(accept.contains("as=PartialObjectMetadataList"), "{accept}");
        expect(
            &mut server,
            "/api/v1/namespaces",
            &["limit=500", "continue=page-2"],
            metadata_list(json!([{"metadata": {"name": "b"}}]), None),
        )
        .await;
        // Our Secrets: by name, metadata only.
        let accept = expect(
            &mut server,
            "/api/v1/secrets",
            &["fieldSelector=metadata.name%3Decr-pull-secret", "limit=500"],
            metadata_list(
                json!([{"metadata": {"name": SECRET, "namespace": "a"}}]),
                None,
            ),
        )
        .await;
        assert!(accept.contains("as=PartialObjectMetadataList"), "{accept}");
        // No ServiceAccounts without --service-accounts; then the Lease (absent).
        expect(
            &mut server,
            "/apis/coordination.k8s.io/v1/namespaces/ecr-pull-secrets/leases/ecr-pull-secrets",
            &[],
            refused(404, "not found"),
        )
        .await;
        let snapshot = reads.await.unwrap().unwrap();
        assert_eq!(snapshot.namespaces.len(), 2);
        assert_eq!(snapshot.secrets.len(), 1);
        assert!(snapshot.service_accounts.is_none());
        assert_eq!(
            snapshot.lease,
            ("ecr-pull-secrets/ecr-pull-secrets".into(), None)
        );
        assert!(server.next_request().await.is_none(), "no more requests");
    }

    #[tokio::test]
    async fn service_accounts_are_listed_with_the_flag_and_the_lease_namespace_wins() {
        let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let args = args(&["--service-accounts", "default", "--lease-namespace", "ops"]);
        let reads = tokio::spawn(async move { observe(&client, &args).await });
        expect(
            &mut server,
            "/api/v1/namespaces",
            &[],
            metadata_list(json!([]), None),
        )
        .await;
        expect(
            &mut server,
            "/api/v1/secrets",
            &[],
            metadata_list(json!([]), None),
        )
        .await;
        expect(
            &mut server,
            "/api/v1/serviceaccounts",
            &["limit=500"],
            respond(
                200,
                json!({"apiVersion": "v1", "kind": "ServiceAccountList", "metadata": {},
                       "items": [{"metadata": {"name": "default", "namespace": "a"}}]}),
            ),
        )
        .await;
        expect(
            &mut server,
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases/ecr-pull-secrets",
            &[],
            respond(
                200,
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "ecr-pull-secrets", "namespace": "ops"},
                       "spec": {"holderIdentity": "pod-1"}}),
            ),
        )
        .await;
        let snapshot = reads.await.unwrap().unwrap();
        assert_eq!(snapshot.service_accounts.unwrap().1.len(), 1);
        assert_eq!(snapshot.lease.0, "ops/ecr-pull-secrets");
        assert!(snapshot.lease.1.is_some());
    }

    #[tokio::test]
    async fn a_refusal_names_the_permission_and_the_fix() {
        // (requests answered before the refusal, the refused path, expected message parts)
        let cases: [(usize, &str, &[&str]); 3] = [
            (
                0,
                "/api/v1/namespaces",
                &[
                    "list namespaces",
                    "`list` on namespaces",
                    "deploy/common.yaml",
                ],
            ),
            (
                1,
                "/api/v1/secrets",
                &[
                    "list Secrets named ecr-pull-secret",
                    "resourceNames [ecr-pull-secret]",
                ],
            ),
            (
                2,
                "/apis/coordination.k8s.io/v1/namespaces/ecr-pull-secrets/leases/ecr-pull-secrets",
                &[
                    "get Lease ecr-pull-secrets/ecr-pull-secrets",
                    "`get` on leases",
                    "--lease-namespace",
                ],
            ),
        ];
        for (answered, path, expected) in cases {
            let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let reads = tokio::spawn(async move { observe(&client, &args(&[])).await });
            for _ in 0..answered {
                let (_, send) = server.next_request().await.unwrap();
                send.send_response(metadata_list(json!([]), None));
            }
            expect(
                &mut server,
                path,
                &[],
                refused(403, "forbidden: User \"x\" cannot ..."),
            )
            .await;
            let err = reads.await.unwrap().unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Config(_)), "{text}");
            assert!(text.contains("not allowed to"), "{text}");
            assert!(text.contains("forbidden: User"), "{text}");
            for part in expected {
                assert!(text.contains(part), "{path}: {part}: {text}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_api_server_times_out_with_the_flag_to_raise() {
        let (service, mut server) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let reads =
            tokio::spawn(async move { observe(&client, &args(&["--api-timeout", "3s"])).await });
        let pending = server.next_request().await;
        let err = reads.await.unwrap().unwrap_err();
        drop(pending);
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("--api-timeout"), "{err}");
    }
}

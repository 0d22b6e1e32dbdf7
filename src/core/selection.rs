//! Which namespaces get the pull secret.
//!
//! Pure decision logic, no I/O: names or globs from `--target-namespaces` and
//! `--exclude-namespaces`, a Kubernetes label selector from `--namespace-selector`, and a
//! per-namespace opt-out annotation. Everything is validated up front in [`Selection::new`] so
//! a typo fails at startup instead of silently selecting nothing (or everything).
//!
//! The label selector is kube's [`Selector`]; kube has no parser for the `kubectl -l` string
//! form, so `parse_selector` is ours, with errors that say what to write instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::core::{Expression, Selector, SelectorExt};

use crate::core::names::is_dns_subdomain;

use crate::core::meta::NAME_LABEL;
pub(crate) use crate::core::meta::OPT_OUT_ANNOTATION;

/// What the user calls the three parts of a selection, so errors name what they wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub(crate) include: &'static str,
    pub(crate) exclude: &'static str,
    pub(crate) selector: &'static str,
}

/// The flags of `run` and `status`.
pub const FLAGS: Fields = Fields {
    include: "--target-namespaces",
    exclude: "--exclude-namespaces",
    selector: "--namespace-selector",
};

/// An EcrPullSecret's spec.
pub(crate) const SPEC: Fields = Fields {
    include: "spec.namespaces.include",
    exclude: "spec.namespaces.exclude",
    selector: "spec.namespaces.selector",
};

/// `labels` with `kubernetes.io/metadata.name` set to the namespace's name, as the API server
/// sets it: the namespace cache drops that label (`meta::slim_namespace`).
fn with_name_label<'a>(
    labels: &'a BTreeMap<String, String>,
    name: &str,
) -> std::borrow::Cow<'a, BTreeMap<String, String>> {
    match labels.contains_key(NAME_LABEL) {
        true => std::borrow::Cow::Borrowed(labels),
        false => {
            let mut labels = labels.clone();
            labels.insert(NAME_LABEL.to_string(), name.to_string());
            std::borrow::Cow::Owned(labels)
        }
    }
}

#[cfg(test)]
const TARGET_FLAG: &str = FLAGS.include;
#[cfg(test)]
const EXCLUDE_FLAG: &str = FLAGS.exclude;

/// Namespace selection: include globs (empty = all), exclude globs (win over include), an
/// optional label selector, and the opt-out annotation. The default selects every namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    /// All must match; empty selects everything. Expressions sorted by key (see
    /// [`canonical`]).
    selector: Selector,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SelectionError {
    #[error(
        "{flag}: invalid namespace pattern {pattern:?}: {problem}; expected a namespace name or a glob \
         of a-z, 0-9, '-', '*' (any run of characters) and '?' (one character), \
         e.g. {flag}=team-*,*-prod,shared"
    )]
    InvalidGlob {
        flag: &'static str,
        pattern: String,
        problem: String,
    },
    #[error(
        "{field}: invalid label selector {selector:?}: {problem}; expected comma-separated \
         requirements as in `kubectl -l` (k=v, k==v, k!=v, k in (a,b), k notin (a,b), k, !k), \
         e.g. 'env=prod,tier in (web,api),!legacy'"
    )]
    InvalidLabelSelector {
        field: &'static str,
        selector: String,
        problem: String,
    },
    /// A selector built from its parts (an EcrPullSecret's `LabelSelector`), not parsed.
    #[error("{field}: {problem}")]
    InvalidSelectorExpression {
        field: &'static str,
        problem: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Selected,
    /// Being deleted: never written to, and nothing is removed either (namespace deletion does it).
    Terminating,
    /// Not selected: with a short static reason for logs/metrics: "not-included", "excluded", "label-selector", "opt-out".
    NotSelected(&'static str),
}

impl Decision {
    /// A short static label for logs and metrics: "selected", "terminating", or the reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Decision::Selected => "selected",
            Decision::Terminating => "terminating",
            Decision::NotSelected(reason) => reason,
        }
    }
}

impl Selection {
    /// include: names or globs (`*` any run of chars, `?` one char; otherwise the namespace name charset a-z0-9-); empty = all namespaces.
    /// exclude: names or globs; wins over include.
    /// label_selector: Kubernetes label selector syntax as in `kubectl -l`: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (commas inside parentheses belong to the set). Empty/None = everything.
    ///
    /// Entries are trimmed and empty ones ignored (so `a,,b` and a trailing comma are harmless).
    pub fn new(
        fields: &Fields,
        include: &[String],
        exclude: &[String],
        label_selector: Option<&str>,
    ) -> Result<Selection, SelectionError> {
        let selector = match label_selector.map(str::trim) {
            Some(text) if !text.is_empty() => {
                parse_selector(text).map_err(|problem| SelectionError::InvalidLabelSelector {
                    field: fields.selector,
                    selector: text.to_string(),
                    problem,
                })?
            }
            _ => Selector::default(),
        };
        Selection::with_selector(fields, include, exclude, selector)
    }

    /// As [`Selection::new`], with a selector built elsewhere (from an EcrPullSecret's
    /// `LabelSelector`): its keys and values are checked as the parser checks them.
    pub(crate) fn with_selector(
        fields: &Fields,
        include: &[String],
        exclude: &[String],
        selector: Selector,
    ) -> Result<Selection, SelectionError> {
        let expressions: Vec<Expression> = selector.into_iter().collect();
        for expression in &expressions {
            check_expression(expression).map_err(|problem| {
                SelectionError::InvalidSelectorExpression {
                    field: fields.selector,
                    problem,
                }
            })?;
        }
        Ok(Selection {
            include: globs(fields.include, include)?,
            exclude: globs(fields.exclude, exclude)?,
            selector: canonical(expressions),
        })
    }

    /// Whether namespace `name` should hold the secret, and if not, why.
    pub(crate) fn decide(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        terminating: bool,
    ) -> Decision {
        if terminating {
            return Decision::Terminating;
        }
        let opted_out = annotations
            .get(OPT_OUT_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if opted_out {
            return Decision::NotSelected("opt-out");
        }
        if self.exclude.iter().any(|g| g.matches(name)) {
            return Decision::NotSelected("excluded");
        }
        if !self.include.is_empty() && !self.include.iter().any(|g| g.matches(name)) {
            return Decision::NotSelected("not-included");
        }
        if !self.selector.selects_all() && !self.selector.matches(&with_name_label(labels, name)) {
            return Decision::NotSelected("label-selector");
        }
        Decision::Selected
    }

    /// The selector as a string usable in a server-side list/watch `labelSelector` (canonical form), or None if it selects everything.
    ///
    /// Canonical as in Kubernetes: requirements sorted by key, set values sorted and
    /// deduplicated, `==` written as `=`; so equal selectors give equal strings.
    pub(crate) fn label_selector_string(&self) -> Option<String> {
        (!self.selector.selects_all()).then(|| self.selector.to_string())
    }
}

/// Expressions sorted by key, stably (same-key expressions keep their order): with kube's
/// sorted set values and `==` already `Equal`, equal selectors then print the same string.
fn canonical(mut expressions: Vec<Expression>) -> Selector {
    expressions.sort_by(|a, b| key(a).cmp(key(b)));
    expressions.into_iter().collect()
}

fn key(expression: &Expression) -> &str {
    match expression {
        Expression::Equal(k, _)
        | Expression::NotEqual(k, _)
        | Expression::In(k, _)
        | Expression::NotIn(k, _)
        | Expression::Exists(k)
        | Expression::DoesNotExist(k) => k,
    }
}

/// What the API server would refuse in an expression: a bad key or value, an empty set.
fn check_expression(expression: &Expression) -> Result<(), String> {
    label_key(key(expression))?;
    match expression {
        Expression::Equal(_, value) | Expression::NotEqual(_, value) => {
            label_value(value)?;
        }
        Expression::In(k, values) | Expression::NotIn(k, values) => {
            if values.is_empty() {
                return Err(format!(
                    "no values for key {k:?}: In and NotIn need at least one value"
                ));
            }
            for value in values {
                label_value(value)?;
            }
        }
        Expression::Exists(_) | Expression::DoesNotExist(_) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Globs

/// A namespace name pattern: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(String);

fn globs(flag: &'static str, entries: &[String]) -> Result<Vec<Glob>, SelectionError> {
    entries
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|pattern| {
            Glob::parse(pattern).map_err(|problem| SelectionError::InvalidGlob {
                flag,
                pattern: pattern.to_string(),
                problem,
            })
        })
        .collect()
}

impl Glob {
    fn parse(pattern: &str) -> Result<Glob, String> {
        if let Some(c) = pattern
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '*' | '?'))
        {
            return Err(if c.is_ascii_uppercase() {
                format!("contains {c:?}; namespace names are lower-case")
            } else {
                format!("contains {c:?}, which cannot appear in a namespace name")
            });
        }
        if pattern.len() > 63 {
            return Err(format!(
                "is {} characters long; namespace names are at most 63",
                pattern.len()
            ));
        }
        Ok(Glob(pattern.to_string()))
    }

    /// Iterative matching with backtracking to the last `*` only: linear in practice, no
    /// recursion. Bytewise is exact here: the pattern is ASCII and namespace names are too.
    fn matches(&self, name: &str) -> bool {
        let (pattern, name) = (self.0.as_bytes(), name.as_bytes());
        let (mut p, mut n) = (0, 0);
        // The last `*` seen and the name position its current (shortest) match ends at.
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match pattern.get(p) {
                Some(b'*') => {
                    star = Some((p, n));
                    p += 1;
                }
                Some(&c) if c == b'?' || c == name[n] => {
                    p += 1;
                    n += 1;
                }
                // Mismatch: let the last `*` swallow one more character and retry after it.
                _ => match star {
                    Some((star_p, star_n)) => {
                        star = Some((star_p, star_n + 1));
                        p = star_p + 1;
                        n = star_n + 1;
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A key or value: a run of anything but whitespace and `!=(),<>`.
    Word(&'a str),
    In,
    NotIn,
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
    End,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "{w:?}"),
            Token::In => f.write_str("'in'"),
            Token::NotIn => f.write_str("'notin'"),
            Token::Not => f.write_str("'!'"),
            Token::Eq => f.write_str("'='"),
            Token::DoubleEq => f.write_str("'=='"),
            Token::NotEq => f.write_str("'!='"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
            Token::End => f.write_str("the end"),
        }
    }
}

/// Splits like the Kubernetes lexer, so `in`/`notin` are keywords wherever they appear: a
/// selector we accept is then one the API server accepts too.
fn tokenize(text: &str) -> Result<Vec<Token<'_>>, String> {
    let is_special = |c: char| c.is_whitespace() || "!=(),<>".contains(c);
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        let (token, len) = match c {
            '!' if rest.starts_with("!=") => (Token::NotEq, 2),
            '!' => (Token::Not, 1),
            '=' if rest.starts_with("==") => (Token::DoubleEq, 2),
            '=' => (Token::Eq, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            ',' => (Token::Comma, 1),
            '<' | '>' => {
                return Err(format!(
                    "{c:?} is not supported for namespace selection; use =, !=, in or notin"
                ));
            }
            _ => {
                let len = rest.find(is_special).unwrap_or(rest.len());
                let token = match &rest[..len] {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    word => Token::Word(word),
                };
                (token, len)
            }
        };
        tokens.push(token);
        rest = rest[len..].trim_start();
    }
    tokens.push(Token::End);
    Ok(tokens)
}

/// A selector in `kubectl -l` syntax; kube has the model but no parser for this form.
fn parse_selector(text: &str) -> Result<Selector, String> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
    };
    let mut requirements = Vec::new();
    loop {
        let requirement = parser.requirement()?;
        match parser.next() {
            Token::Comma => requirements.push(requirement),
            Token::End => {
                requirements.push(requirement);
                return Ok(requirements.into_iter().collect());
            }
            other => {
                return Err(format!(
                    "expected ',' or the end after `{requirement}`, found {other}"
                ));
            }
        }
    }
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        self.tokens[self.pos]
    }

    /// Stays on `End` once there, so callers need not check bounds.
    fn next(&mut self) -> Token<'a> {
        let token = self.peek();
        if token != Token::End {
            self.pos += 1;
        }
        token
    }

    fn requirement(&mut self) -> Result<Expression, String> {
        let key = match self.next() {
            Token::Not => {
                return match self.next() {
                    Token::Word(key) => Ok(Expression::DoesNotExist(label_key(key)?)),
                    other => Err(format!("expected a label key after '!', found {other}")),
                };
            }
            Token::Word(key) => label_key(key)?,
            Token::Comma | Token::End => {
                return Err("empty requirement (a stray or trailing ',')".to_string());
            }
            other => return Err(format!("expected a label key or '!key', found {other}")),
        };
        match self.peek() {
            Token::Comma | Token::End => Ok(Expression::Exists(key)),
            Token::Eq | Token::DoubleEq => {
                self.next();
                let value = self.exact_value(&key)?;
                Ok(Expression::Equal(key, value))
            }
            Token::NotEq => {
                self.next();
                let value = self.exact_value(&key)?;
                Ok(Expression::NotEqual(key, value))
            }
            Token::In => {
                self.next();
                let values = self.set(&key, "in")?;
                Ok(Expression::In(key, values))
            }
            Token::NotIn => {
                self.next();
                let values = self.set(&key, "notin")?;
                Ok(Expression::NotIn(key, values))
            }
            other => Err(format!(
                "expected =, ==, !=, in, notin, ',' or the end after key {key:?}, found {other}"
            )),
        }
    }

    /// The value after `=`, `==` or `!=`; may be empty (`k=` matches an empty label value).
    fn exact_value(&mut self, key: &str) -> Result<String, String> {
        match self.peek() {
            Token::Comma | Token::End => Ok(String::new()),
            Token::Word(value) => {
                self.next();
                label_value(value)
            }
            other => Err(format!("expected a value for key {key:?}, found {other}")),
        }
    }

    /// `(a,b,...)` after `in` / `notin`: at least one value, none empty.
    fn set(&mut self, key: &str, op: &str) -> Result<BTreeSet<String>, String> {
        let example = format!("e.g. `{key} {op} (a,b)`");
        match self.next() {
            Token::Open => {}
            other => {
                return Err(format!(
                    "expected '(' after '{op}', found {other}; {example}"
                ));
            }
        }
        let mut values = BTreeSet::new();
        loop {
            match self.next() {
                Token::Word(value) => {
                    values.insert(label_value(value)?);
                }
                Token::Close if values.is_empty() => {
                    return Err(format!(
                        "'{op}' for key {key:?} needs at least one value in the parentheses; {example}"
                    ));
                }
                other => {
                    return Err(format!(
                        "expected a value in the '{op}' list for key {key:?}, found {other}; {example}"
                    ));
                }
            }
            match self.next() {
                Token::Comma => {}
                Token::Close => return Ok(values),
                other => {
                    return Err(format!(
                        "expected ',' or ')' in the '{op}' list for key {key:?}, found {other}; {example}"
                    ));
                }
            }
        }
    }
}

/// `[prefix/]name`: prefix a DNS subdomain (≤253), name 1-63 of [A-Za-z0-9._-], alphanumeric at both ends.
fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(format!(
            "label key {key:?} has an invalid prefix {prefix:?}: expected a lower-case DNS subdomain \
             of at most 253 characters, as in example.com/team"
        ));
    }
    if name.is_empty() || !is_label_value(name) {
        return Err(format!(
            "{key:?} is not a valid label key: the name must be 1-63 characters of letters, digits, \
             '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, String> {
    if !is_label_value(value) {
        return Err(format!(
            "{value:?} is not a valid label value: at most 63 characters of letters, digits, \
             '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(value.to_string())
}

/// Empty, or at most 63 of [A-Za-z0-9._-] with an alphanumeric first and last character.
fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Dot-separated DNS labels of [a-z0-9-], each alphanumeric at both ends; at most 253 in all.
#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(str::to_string).collect()
    }

    /// `"a=1,b=2"` → labels/annotations; empty string → empty map.
    fn map(s: &str) -> BTreeMap<String, String> {
        s.split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn selection(include: &str, exclude: &str, selector: Option<&str>) -> Selection {
        Selection::new(&FLAGS, &list(include), &list(exclude), selector).unwrap_or_else(|e| {
            panic!("include={include:?} exclude={exclude:?} selector={selector:?}: {e}")
        })
    }

    #[test]
    fn globs_and_exclusion() {
        use Decision::*;
        // (include, exclude, namespace, decision)
        let cases = [
            ("", "", "default", Selected),
            ("*", "", "default", Selected),
            ("team-*", "", "team-a", Selected),
            ("team-*", "", "team-", Selected),
            ("team-*", "", "teams", NotSelected("not-included")),
            ("team-*", "", "my-team-a", NotSelected("not-included")),
            ("*-prod", "", "payments-prod", Selected),
            ("*-prod", "", "payments-prod-2", NotSelected("not-included")),
            ("a?c", "", "abc", Selected),
            ("a?c", "", "ac", NotSelected("not-included")),
            ("a?c", "", "abbc", NotSelected("not-included")),
            ("*a*b?", "", "xxaxxbz", Selected),
            ("*a*b?", "", "xxaxxb", NotSelected("not-included")),
            ("team-a,team-b", "", "team-b", Selected),
            ("team-a,team-b", "", "team-c", NotSelected("not-included")),
            ("team-a", "", "team-ab", NotSelected("not-included")),
            (" team-a , ", "", "team-a", Selected),
            (" , ", "", "anything", Selected),
            ("", "kube-*", "kube-system", NotSelected("excluded")),
            ("", "kube-*", "team-a", Selected),
            ("", "default", "default", NotSelected("excluded")),
            // Exclude wins over include, and is checked first.
            ("team-*", "team-b", "team-b", NotSelected("excluded")),
            ("*", "*", "team-a", NotSelected("excluded")),
            ("team-*", "kube-*", "kube-system", NotSelected("excluded")),
        ];
        for (include, exclude, ns, expected) in cases {
            let s = selection(include, exclude, None);
            let empty = BTreeMap::new();
            assert_eq!(
                s.decide(ns, &empty, &empty, false),
                expected,
                "include={include:?} exclude={exclude:?} ns={ns}"
            );
        }
    }

    /// The namespace cache drops `kubernetes.io/metadata.name` (`meta::slim_namespace`); a
    /// selector on it still matches, as on the API server.
    #[test]
    fn the_name_label_is_matched_without_being_cached() {
        let empty = BTreeMap::new();
        let s = selection(
            "",
            "",
            Some("kubernetes.io/metadata.name in (team-a,team-b)"),
        );
        assert_eq!(
            s.decide("team-a", &empty, &empty, false),
            Decision::Selected
        );
        assert_eq!(
            s.decide("team-c", &empty, &empty, false),
            Decision::NotSelected("label-selector")
        );
        let s = selection("", "", Some("kubernetes.io/metadata.name!=team-a,env=prod"));
        assert_eq!(
            s.decide("team-b", &map("env=prod"), &empty, false),
            Decision::Selected
        );
        assert_eq!(
            s.decide("team-a", &map("env=prod"), &empty, false),
            Decision::NotSelected("label-selector")
        );
    }

    #[test]
    fn label_selectors() {
        // (selector, labels, selected)
        let cases = [
            ("env=prod", "env=prod", true),
            ("env=prod", "env=dev", false),
            ("env=prod", "", false),
            ("env==prod", "env=prod", true),
            ("env==prod", "env=dev", false),
            ("env!=prod", "env=dev", true),
            ("env!=prod", "", true), // absent key satisfies != (Kubernetes semantics)
            ("env!=prod", "env=prod", false),
            ("env in (prod,staging)", "env=staging", true),
            ("env in (prod,staging)", "env=dev", false),
            ("env in (prod,staging)", "", false),
            ("env notin (prod,staging)", "env=dev", true),
            ("env notin (prod,staging)", "", true), // absent key satisfies notin
            ("env notin (prod,staging)", "env=prod", false),
            ("env", "env=", true),
            ("env", "team=a", false),
            ("!env", "team=a", true),
            ("!env", "env=prod", false),
            ("env=", "env=", true),
            ("env=", "env=prod", false),
            ("example.com/team=a", "example.com/team=a", true),
            // Commas inside parentheses belong to the set; outside they separate requirements.
            ("env in (a,b),team", "env=b,team=x", true),
            ("env in (a,b),team", "env=b", false),
            ("env in ( a , b ) , !legacy", "env=a", true),
            ("env in ( a , b ) , !legacy", "env=a,legacy=yes", false),
            (
                "env=prod,tier notin (db),owner",
                "env=prod,tier=web,owner=x",
                true,
            ),
            (
                "env=prod,tier notin (db),owner",
                "env=prod,tier=db,owner=x",
                false,
            ),
            ("  ", "", true),
            ("", "", true),
        ];
        let empty = BTreeMap::new();
        for (selector, labels, expected) in cases {
            let s = selection("", "", Some(selector));
            let decision = s.decide("ns", &map(labels), &empty, false);
            let want = if expected {
                Decision::Selected
            } else {
                Decision::NotSelected("label-selector")
            };
            assert_eq!(decision, want, "selector={selector:?} labels={labels:?}");
        }
        assert_eq!(
            selection("", "", None).decide("ns", &map("a=b"), &empty, false),
            Decision::Selected
        );
    }

    #[test]
    fn canonical_selector_strings() {
        // (input, canonical)
        let cases = [
            ("env==prod", Some("env=prod")),
            (
                "tier notin (web, db, web),env in (b,a),!legacy",
                Some("env in (a,b),!legacy,tier notin (db,web)"),
            ),
            ("b, a=, c!=x", Some("a=,b,c!=x")),
            ("example.com/team=a", Some("example.com/team=a")),
            ("   ", None),
        ];
        for (input, canonical) in cases {
            let s = selection("", "", Some(input));
            assert_eq!(s.label_selector_string().as_deref(), canonical, "{input:?}");
            // The canonical form parses back to the same selector.
            if let Some(c) = canonical {
                assert_eq!(
                    selection("", "", Some(c))
                        .label_selector_string()
                        .as_deref(),
                    Some(c)
                );
            }
        }
        assert_eq!(selection("", "", None).label_selector_string(), None);
    }

    /// A selector built from parts (an EcrPullSecret's) is held to what the parser accepts.
    #[test]
    fn built_selectors_are_checked_like_parsed_ones() {
        let built = |expression: Expression| {
            Selection::with_selector(&SPEC, &[], &[], expression.into()).map_err(|e| e.to_string())
        };
        let ok = built(Expression::In(
            "env".into(),
            ["b".into(), "a".into()].into(),
        ))
        .unwrap();
        assert_eq!(ok, selection("", "", Some("env in (a,b)")));
        for (expression, problem) in [
            (
                Expression::Exists("a b".into()),
                "\"a b\" is not a valid label key",
            ),
            (
                Expression::Equal("env".into(), "-prod".into()),
                "\"-prod\" is not a valid label value",
            ),
            (
                Expression::NotIn("env".into(), BTreeSet::new()),
                "no values for key \"env\"",
            ),
        ] {
            let error = built(expression).unwrap_err();
            assert!(error.starts_with("spec.namespaces.selector: "), "{error}");
            assert!(error.contains(problem), "{error}");
        }
    }

    #[test]
    fn opt_out_and_terminating() {
        use Decision::*;
        // (annotations, terminating, decision) for a namespace that is otherwise selected.
        let cases = [
            ("", false, Selected),
            (
                "ecr-pull-secrets.io/exclude=true",
                false,
                NotSelected("opt-out"),
            ),
            (
                "ecr-pull-secrets.io/exclude=TRUE",
                false,
                NotSelected("opt-out"),
            ),
            (
                "ecr-pull-secrets.io/exclude=True",
                false,
                NotSelected("opt-out"),
            ),
            ("ecr-pull-secrets.io/exclude=false", false, Selected),
            ("ecr-pull-secrets.io/exclude=", false, Selected),
            ("other.io/exclude=true", false, Selected),
            ("", true, Terminating),
            // Terminating comes before everything else: nothing is written or removed.
            ("ecr-pull-secrets.io/exclude=true", true, Terminating),
        ];
        let s = selection("team-*", "", Some("env=prod"));
        for (annotations, terminating, expected) in cases {
            assert_eq!(
                s.decide("team-a", &map("env=prod"), &map(annotations), terminating),
                expected,
                "annotations={annotations:?} terminating={terminating}"
            );
        }
    }

    #[test]
    fn check_order() {
        use Decision::*;
        // Every check fails; each row removes the earliest failure to expose the next one.
        let labels = map("env=dev");
        let opted_out = map("ecr-pull-secrets.io/exclude=true");
        let none = BTreeMap::new();
        let s = selection("team-*", "other", Some("env=prod"));
        assert_eq!(s.decide("other", &labels, &opted_out, true), Terminating);
        assert_eq!(
            s.decide("other", &labels, &opted_out, false),
            NotSelected("opt-out")
        );
        assert_eq!(
            s.decide("other", &labels, &none, false),
            NotSelected("excluded")
        );
        assert_eq!(
            s.decide("x", &labels, &none, false),
            NotSelected("not-included")
        );
        assert_eq!(
            s.decide("team-a", &labels, &none, false),
            NotSelected("label-selector")
        );
        assert_eq!(s.decide("team-a", &map("env=prod"), &none, false), Selected);
        assert_eq!(Selected.reason(), "selected");
        assert_eq!(Terminating.reason(), "terminating");
        assert_eq!(NotSelected("opt-out").reason(), "opt-out");
    }

    #[test]
    fn invalid_globs() {
        // (include, exclude, flag named, fragment of the problem)
        let long = "a".repeat(64);
        let cases = [
            (
                "Team-*",
                "",
                TARGET_FLAG,
                "'T'; namespace names are lower-case",
            ),
            ("team_a", "", TARGET_FLAG, "'_', which cannot appear"),
            ("team.*", "", TARGET_FLAG, "'.', which cannot appear"),
            ("team a", "", TARGET_FLAG, "' ', which cannot appear"),
            ("", "kube/*", EXCLUDE_FLAG, "'/', which cannot appear"),
            ("", "[a-z]*", EXCLUDE_FLAG, "'['"),
            ("", long.as_str(), EXCLUDE_FLAG, "64 characters long"),
        ];
        for (include, exclude, flag, problem) in cases {
            let err = Selection::new(&FLAGS, &list(include), &list(exclude), None).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("{flag}: ")), "{msg}");
            assert!(msg.contains(problem), "{msg}");
            assert!(msg.contains(&format!("e.g. {flag}=team-*")), "{msg}");
            let pattern = if include.is_empty() { exclude } else { include };
            assert!(msg.contains(&format!("{pattern:?}")), "{msg}");
        }
        // 63 characters is still fine.
        let ok = "a".repeat(63);
        assert!(Selection::new(&FLAGS, &[ok], &[], None).is_ok());
    }

    #[test]
    fn invalid_selectors() {
        // (selector, fragment of the problem)
        let long = format!("env={}", "v".repeat(64));
        let long_prefix = format!("{}.com/team=a", "a".repeat(250));
        let cases = [
            (
                "env in prod",
                "expected '(' after 'in', found \"prod\"; e.g. `env in (a,b)`",
            ),
            ("env in ()", "needs at least one value"),
            (
                "env notin ()",
                "'notin' for key \"env\" needs at least one value",
            ),
            (
                "env in (a,,b)",
                "expected a value in the 'in' list for key \"env\", found ','",
            ),
            ("env in (a b)", "expected ',' or ')'"),
            (
                "env in (a",
                "expected ',' or ')' in the 'in' list for key \"env\", found the end",
            ),
            ("env=prod,", "empty requirement"),
            (",env=prod", "empty requirement"),
            ("env=prod,,team", "empty requirement"),
            (
                "env prod",
                "expected =, ==, !=, in, notin, ',' or the end after key \"env\", found \"prod\"",
            ),
            (
                "env=a=b",
                "expected ',' or the end after `env=a`, found '='",
            ),
            ("env=(a)", "expected a value for key \"env\", found '('"),
            ("!", "expected a label key after '!', found the end"),
            (
                "!env=prod",
                "expected ',' or the end after `!env`, found '='",
            ),
            ("=prod", "expected a label key or '!key', found '='"),
            ("-env=prod", "\"-env\" is not a valid label key"),
            ("env-=prod", "\"env-\" is not a valid label key"),
            ("Example.com/team=a", "invalid prefix \"Example.com\""),
            ("/team=a", "invalid prefix \"\""),
            ("a..b/team=a", "invalid prefix \"a..b\""),
            (
                "example.com/=a",
                "\"example.com/\" is not a valid label key",
            ),
            ("a/b/c=d", "\"a/b/c\" is not a valid label key"),
            ("env=pro$d", "\"pro$d\" is not a valid label value"),
            ("env=-prod", "\"-prod\" is not a valid label value"),
            ("env in (ok,-bad)", "\"-bad\" is not a valid label value"),
            (long.as_str(), "is not a valid label value"),
            (long_prefix.as_str(), "invalid prefix"),
            ("replicas>3", "'>' is not supported"),
            ("in=x", "expected a label key or '!key', found 'in'"),
            ("env=in", "expected a value for key \"env\", found 'in'"),
        ];
        for (selector, problem) in cases {
            let err = Selection::new(&FLAGS, &[], &[], Some(selector)).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "--namespace-selector: invalid label selector {:?}: ",
                    selector.trim()
                )),
                "{msg}"
            );
            assert!(msg.contains(problem), "{selector:?}: {msg}");
            assert!(
                msg.contains("e.g. 'env=prod,tier in (web,api),!legacy'"),
                "{msg}"
            );
        }
    }
}

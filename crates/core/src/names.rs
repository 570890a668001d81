//! The one rule for identifiers: revision ids and the names of services,
//! hosts and instances.
//!
//! These values come from outside — revision ids from CI systems and branch
//! names, through the API and the CLI — and end up in file names (the
//! release directory `state_dir/releases/SERVICE/REVISION`, log files), in
//! URL paths (`/services/NAME/...`), in deployment ids (`SERVICE@N`) and in
//! instance commands (`{revision}`). So they are checked once, where they
//! enter (config, API, CLI), against a rule that makes every one of those
//! uses safe without further escaping:
//!
//! - **names** (service, host, instance): `[A-Za-z0-9][A-Za-z0-9_-]*`.
//!   At most 63 characters (a DNS label, so a name can become a host or
//!   container name), and a *service* name at most 48, so that its instance
//!   names `SERVICE-N` stay within 63. No `.`, so a name is never `.` or
//!   `..` nor hides a file extension; no `@`, which separates the service
//!   from the number in a deployment id.
//! - **revision ids**: `[A-Za-z0-9][A-Za-z0-9._+-]*`, at most 128
//!   characters. Room for versions (`1.4.2`, `1.4.2+build.7`), git hashes
//!   and sanitised branch names (`feature-login`), but no `/`, no leading
//!   `.`, no spaces, no quotes and no other shell metacharacter: a revision
//!   id is a single path segment and can never become code.

use std::fmt;

/// What an identifier names; each kind has its own alphabet and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Service,
    Host,
    Instance,
    Revision,
}

/// Longest service name: leaves room for `-N` within [`MAX_NAME`].
pub const MAX_SERVICE: usize = 48;
/// Longest host or instance name (a DNS label).
pub const MAX_NAME: usize = 63;
/// Longest revision id (well below a file name's 255 bytes).
pub const MAX_REVISION: usize = 128;

impl NameKind {
    /// The field it is, as a message's prefix.
    pub fn label(self) -> &'static str {
        match self {
            NameKind::Service => "service",
            NameKind::Host => "host",
            NameKind::Instance => "instance",
            NameKind::Revision => "revision",
        }
    }

    fn what(self) -> &'static str {
        match self {
            NameKind::Service => "service name",
            NameKind::Host => "host name",
            NameKind::Instance => "instance name",
            NameKind::Revision => "revision id",
        }
    }

    pub fn max_len(self) -> usize {
        match self {
            NameKind::Service => MAX_SERVICE,
            NameKind::Host | NameKind::Instance => MAX_NAME,
            NameKind::Revision => MAX_REVISION,
        }
    }

    /// Characters allowed after the first (which is a letter or a digit).
    fn allows(self, c: char) -> bool {
        c.is_ascii_alphanumeric()
            || c == '-'
            || c == '_'
            || (self == NameKind::Revision && (c == '.' || c == '+'))
    }

    /// The rule in words, for messages and docs.
    pub fn rule(self) -> String {
        let chars = match self {
            NameKind::Revision => "letters, digits, '.', '_', '+', '-'",
            _ => "letters, digits, '_', '-'",
        };
        format!(
            "use {chars} (first a letter or digit), at most {} characters",
            self.max_len()
        )
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

/// An identifier that breaks the rule: which kind, the value (shortened and
/// with control characters escaped, so the message stays one readable
/// line), what exactly is wrong, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", kind.label(), self.problem())]
pub struct NameError {
    pub kind: NameKind,
    /// The offending value as shown in the message (at most 40 characters).
    pub shown: String,
    /// What is wrong, e.g. `'$' is not allowed`.
    pub reason: String,
}

impl NameError {
    /// The message without the field's label, for callers that locate it
    /// themselves (the config's `FILE:LINE:COL: key: message`).
    pub fn problem(&self) -> String {
        format!(
            "'{}' is not a valid {} ({}): {}",
            self.shown,
            self.kind,
            self.reason,
            self.kind.rule()
        )
    }
}

/// How a value appears in a message: the first 40 characters, control
/// characters escaped, `…` when cut.
fn shown(value: &str) -> String {
    const MAX: usize = 40;
    let mut s = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            s.push('…');
            break;
        }
        if c.is_control() {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    s
}

/// Checks `value` as an identifier of `kind`.
pub fn check_name(kind: NameKind, value: &str) -> Result<(), NameError> {
    let fail = |reason: String| {
        Err(NameError {
            kind,
            shown: shown(value),
            reason,
        })
    };
    let Some(first) = value.chars().next() else {
        return fail("it is empty".into());
    };
    let len = value.chars().count();
    if len > kind.max_len() {
        return fail(format!("it is {len} characters long"));
    }
    if !first.is_ascii_alphanumeric() {
        return fail(format!("it starts with {}", quoted(first)));
    }
    if let Some(bad) = value.chars().find(|&c| !kind.allows(c)) {
        return fail(format!("{} is not allowed", quoted(bad)));
    }
    Ok(())
}

/// Checks a revision id.
pub fn check_revision(value: &str) -> Result<(), NameError> {
    check_name(NameKind::Revision, value)
}

fn quoted(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        c if c.is_control() => format!("'{}'", c.escape_default()),
        c => format!("'{c}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_ids_pass() {
        for r in [
            "v1",
            "1.4.2",
            "1.4.2+build.7",
            "2024-06-01_nightly",
            "3f2a9c1d4e5b",
            "A",
            &"x".repeat(MAX_REVISION),
        ] {
            assert_eq!(check_revision(r), Ok(()), "{r}");
        }
        for n in ["web", "api-2", "my_service", "W3"] {
            for k in [NameKind::Service, NameKind::Host, NameKind::Instance] {
                assert_eq!(check_name(k, n), Ok(()), "{k:?} {n}");
            }
        }
        assert!(check_name(NameKind::Service, &"s".repeat(MAX_SERVICE)).is_ok());
        let instance = format!("{}-{}", "s".repeat(MAX_SERVICE), 10u64.pow(13));
        assert!(check_name(NameKind::Instance, &instance).is_ok());
    }

    #[test]
    fn what_could_become_code_or_a_path_is_refused() {
        for r in [
            "",
            "$(touch /tmp/pwned)",
            "`id`",
            "a;b",
            "a b",
            "a'b",
            "a\"b",
            "a\nb",
            "feature/login",
            "../etc",
            ".hidden",
            "-rf",
            "+1",
            "a@b",
            "a|b",
            "a&b",
            "a>b",
            "a*",
            "a\\b",
            "é",
        ] {
            assert!(check_revision(r).is_err(), "{r:?} passed");
        }
        for n in ["", "a.b", "a@1", "-a", "_a", "a b", "a/b", "a+b", "é"] {
            assert!(check_name(NameKind::Service, n).is_err(), "{n:?} passed");
        }
        assert!(check_revision(&"x".repeat(MAX_REVISION + 1)).is_err());
        assert!(check_name(NameKind::Service, &"s".repeat(MAX_SERVICE + 1)).is_err());
        assert!(check_name(NameKind::Host, &"h".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn message_states_the_rule_and_the_value() {
        let e = check_revision("$(id)").unwrap_err();
        assert_eq!(
            e.to_string(),
            "revision: '$(id)' is not a valid revision id (it starts with '$'): use letters, \
             digits, '.', '_', '+', '-' (first a letter or digit), at most 128 characters"
        );
        let e = check_revision("v1;reboot").unwrap_err();
        assert!(e.to_string().contains("(';' is not allowed)"), "{e}");
        let e = check_name(NameKind::Service, "my.app").unwrap_err();
        assert_eq!(
            e.to_string(),
            "service: 'my.app' is not a valid service name ('.' is not allowed): use letters, \
             digits, '_', '-' (first a letter or digit), at most 48 characters"
        );
    }

    #[test]
    fn long_or_multiline_values_are_shortened_in_the_message() {
        let e = check_revision(&"a".repeat(5000)).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("it is 5000 characters long"), "{m}");
        assert!(m.len() < 300, "{m}");
        assert!(m.contains(&format!("'{}…'", "a".repeat(40))), "{m}");
        let e = check_revision("v1\nrm -rf /").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().contains("v1\\nrm -rf /"), "{e}");
    }
}

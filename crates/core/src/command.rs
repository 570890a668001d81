//! Filling a `command` template's `{placeholders}` so that no value can
//! change the command's structure.
//!
//! An instance runs as `/bin/sh -c "exec COMMAND"`, so the user's command
//! may use shell syntax; values such as `{revision}` come from outside (CI,
//! the API). Pasting them in raw would let `$(…)` or `;` in a value run as
//! code, so each placeholder becomes exactly one piece of one shell word,
//! quoted for where it stands in the template:
//!
//! - outside quotes: a single-quoted word, `'…'`, with each `'` of the value
//!   written `'\''` (`--version {revision}` → `--version 'v2'`; next to other
//!   text, as in `--port={port}`, it joins that word);
//! - inside double quotes: the value with `$`, `` ` ``, `"` and `\` escaped;
//! - inside single quotes: the value with each `'` written `'\''` (close,
//!   escaped quote, reopen).
//!
//! Where a value cannot be quoted safely the template is refused, at config
//! time (`handoff check`) as well as at start: inside a command
//! substitution `$(…)` or backquotes, after a substitution that began inside
//! double quotes (where the end of the substitution cannot be found without
//! a full shell parser), right after a backslash or a `$`, inside `$'…'`,
//! and in a here-document. There the instance's environment carries the
//! same values (`$PORT`, `$HANDOFF_REVISION`, …).
//!
//! Inside single quotes the value is inserted literally; if that quoted
//! text is itself a script for another shell (`sh -c '… {revision} …'`),
//! that shell reads the value again, so use the environment there.

use std::fmt::Write as _;

/// Every placeholder a `command` template may use, in the order docs and
/// messages list them. `{address}` is where the instance listens
/// (`127.0.0.1` for local processes).
pub const PLACEHOLDERS: &[&str] = &[
    "port",
    "revision",
    "instance",
    "service",
    "release_dir",
    "address",
];

/// The placeholders as `{port}, {revision}, …`, for messages.
pub fn known() -> String {
    PLACEHOLDERS
        .iter()
        .map(|p| format!("{{{p}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of one instance's placeholders.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub port: u16,
    pub revision: &'a str,
    pub instance: &'a str,
    pub service: &'a str,
    pub release_dir: &'a str,
    pub address: &'a str,
}

impl Values<'_> {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "port" => self.port.to_string(),
            "revision" => self.revision.into(),
            "instance" => self.instance.into(),
            "service" => self.service.into(),
            "release_dir" => self.release_dir.into(),
            "address" => self.address.into(),
            _ => return None,
        })
    }
}

/// What is wrong with a template (or a value) for rendering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("unknown placeholder {{{0}}}; known: {known}", known = known())]
    Unknown(String),
    #[error("has a '{{' without a matching '}}'")]
    Unclosed,
    #[error("placeholder {{{placeholder}}} is {place}, where no value can be quoted safely; move it out, or use the instance's environment there ($PORT, $HANDOFF_REVISION, $HANDOFF_INSTANCE, $HANDOFF_SERVICE; the release directory is the working directory)")]
    Unsafe {
        placeholder: String,
        place: &'static str,
    },
    #[error("the value of {{{0}}} contains a NUL byte, which no command line can carry")]
    Nul(String),
}

/// A lexer state: where in the shell's quoting a template character is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// `$(…)`: a new command inside; `depth` counts open parentheses.
    Subst { depth: u32 },
    /// `"…"`.
    Double,
    /// `` `…` ``.
    Backquote,
}

/// Where the next template character stands. The stack's bottom is the
/// top-level command (unquoted).
struct Lexer {
    stack: Vec<Frame>,
    /// Inside `'…'` (only in an unquoted frame); `ansi` for `$'…'`.
    single: bool,
    ansi: bool,
    /// After `#` at the start of a word, to the end of the line.
    comment: bool,
    /// The previous character was an unconsumed backslash.
    escape: bool,
    /// The previous character was an unquoted, unescaped `$`.
    dollar: bool,
    /// The previous character ends a word (a `#` here starts a comment).
    word_start: bool,
    /// Saw `<<`; from the next newline on we are (maybe) in a here-document.
    heredoc_armed: bool,
    heredoc: bool,
    /// A substitution began inside double quotes: where it ends cannot be
    /// told without a full parser (`case` patterns end in `)`), so from here
    /// on no context is trusted.
    lost: bool,
}

impl Lexer {
    fn new() -> Lexer {
        Lexer {
            stack: Vec::new(),
            single: false,
            ansi: false,
            comment: false,
            escape: false,
            dollar: false,
            word_start: true,
            heredoc_armed: false,
            heredoc: false,
            lost: false,
        }
    }

    fn top(&self) -> Option<Frame> {
        self.stack.last().copied()
    }

    /// Advances over one template character (`next` is the one after it).
    fn step(&mut self, c: char, next: Option<char>) -> bool {
        let mut skip_next = false;
        let was_dollar = std::mem::take(&mut self.dollar);
        if self.heredoc {
            return false;
        }
        if self.comment {
            if c == '\n' {
                self.comment = false;
                self.newline();
            }
            return false;
        }
        if self.escape {
            self.escape = false;
            self.word_start = false;
            return false;
        }
        if self.single {
            if c == '\'' {
                self.single = false;
                self.ansi = false;
            }
            return false;
        }
        match self.top() {
            Some(Frame::Double) => match c {
                '\\' => self.escape = true,
                '"' => {
                    self.stack.pop();
                }
                '`' => {
                    self.stack.push(Frame::Backquote);
                    self.lost = true;
                }
                '$' if next == Some('(') => {
                    self.stack.push(Frame::Subst { depth: 1 });
                    self.lost = true;
                    skip_next = true;
                }
                '$' => self.dollar = true,
                _ => {}
            },
            Some(Frame::Backquote) => match c {
                '\\' => self.escape = true,
                '`' => {
                    self.stack.pop();
                }
                _ => {}
            },
            None | Some(Frame::Subst { .. }) => {
                match c {
                    '\\' => self.escape = true,
                    '\'' => {
                        self.single = true;
                        self.ansi = was_dollar;
                    }
                    '"' => self.stack.push(Frame::Double),
                    '`' => self.stack.push(Frame::Backquote),
                    '$' if next == Some('(') => {
                        self.stack.push(Frame::Subst { depth: 1 });
                        skip_next = true;
                    }
                    '$' => self.dollar = true,
                    '#' if self.word_start => self.comment = true,
                    '<' if next == Some('<') => {
                        self.heredoc_armed = true;
                        skip_next = true;
                    }
                    '\n' => self.newline(),
                    '(' | ')' => {
                        if let Some(Frame::Subst { depth }) = self.stack.last_mut() {
                            if c == '(' {
                                *depth += 1;
                            } else {
                                *depth -= 1;
                                if *depth == 0 {
                                    self.stack.pop();
                                }
                            }
                        }
                    }
                    _ => {}
                }
                self.word_start = c.is_whitespace() || ";&|()<>".contains(c);
            }
        }
        skip_next
    }

    fn newline(&mut self) {
        self.word_start = true;
        if self.heredoc_armed {
            self.heredoc = true;
        }
    }

    /// Why a placeholder cannot stand here, if it cannot.
    fn unsafe_place(&self) -> Option<&'static str> {
        if self.heredoc {
            Some("in a here-document")
        } else if self.stack.iter().any(|f| matches!(f, Frame::Subst { .. })) {
            Some("inside a command substitution $(…)")
        } else if self.stack.contains(&Frame::Backquote) {
            Some("inside backquotes")
        } else if self.lost {
            Some("after a command substitution inside double quotes")
        } else if self.escape {
            Some("right after a backslash")
        } else if self.dollar {
            Some("right after '$' (`${…}` is shell syntax)")
        } else if self.ansi {
            Some("inside $'…' quotes")
        } else {
            None
        }
    }

    /// `value` quoted for where the lexer stands (which must be safe).
    fn quote(&self, value: &str, out: &mut String) {
        if self.single {
            out.push_str(&value.replace('\'', r"'\''"));
        } else if self.top() == Some(Frame::Double) {
            for c in value.chars() {
                if matches!(c, '$' | '`' | '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push('\'');
            out.push_str(&value.replace('\'', r"'\''"));
            out.push('\'');
        }
    }
}

/// Fills every placeholder of `template`, each quoted as one piece of one
/// shell word (see the module's doc); the first problem is the error.
pub fn render(template: &str, values: &Values) -> Result<String, RenderError> {
    let mut errors = Vec::new();
    let out = fill(template, Some(values), &mut errors);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Every problem of a template, without values (for config validation).
pub fn check(template: &str) -> Vec<RenderError> {
    let mut errors = Vec::new();
    fill(template, None, &mut errors);
    errors
}

fn fill(template: &str, values: Option<&Values>, errors: &mut Vec<RenderError>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut lx = Lexer::new();
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '{' {
            out.push(c);
            if lx.step(c, chars.peek().map(|&(_, n)| n)) {
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            continue;
        }
        let after = &template[i + 1..];
        let Some(close) = after.find('}') else {
            errors.push(RenderError::Unclosed);
            out.push_str(&template[i..]);
            break;
        };
        let name = &after[..close];
        // Skip the name and the closing brace.
        for _ in 0..name.chars().count() + 1 {
            chars.next();
        }
        if !PLACEHOLDERS.contains(&name) {
            errors.push(RenderError::Unknown(name.to_string()));
            continue;
        }
        if lx.comment {
            // Nothing in a comment runs; keep the text (it has no newline).
            let _ = write!(out, "{{{name}}}");
            continue;
        }
        if let Some(place) = lx.unsafe_place() {
            errors.push(RenderError::Unsafe {
                placeholder: name.to_string(),
                place,
            });
            continue;
        }
        if let Some(v) = values.and_then(|v| v.get(name)) {
            if v.contains('\0') {
                errors.push(RenderError::Nul(name.to_string()));
                continue;
            }
            lx.quote(&v, &mut out);
        }
        lx.word_start = false;
        lx.dollar = false;
    }
    out
}

#[cfg(test)]
mod tests;

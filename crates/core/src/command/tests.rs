use proptest::prelude::*;

use super::*;

fn values(revision: &str) -> Values<'_> {
    Values {
        port: 8080,
        revision,
        instance: "web-1",
        service: "web",
        release_dir: "/srv/rel",
        address: "127.0.0.1",
    }
}

fn r(template: &str, revision: &str) -> Result<String, RenderError> {
    render(template, &values(revision))
}

#[test]
fn placeholders_become_quoted_words() {
    assert_eq!(
        r(
            "handoff sample-app --port {port} --version {revision}",
            "v2"
        )
        .unwrap(),
        "handoff sample-app --port '8080' --version 'v2'"
    );
    assert_eq!(
        r("app --listen={address}:{port} --dir {release_dir}", "v2").unwrap(),
        "app --listen='127.0.0.1':'8080' --dir '/srv/rel'"
    );
    assert_eq!(
        r("app {instance} {service}", "v2").unwrap(),
        "app 'web-1' 'web'"
    );
}

#[test]
fn each_context_gets_its_own_quoting() {
    let evil = r#"$(touch x)`id`"'\;"#;
    assert_eq!(
        r("app {revision}", evil).unwrap(),
        r#"app '$(touch x)`id`"'\''\;'"#
    );
    assert_eq!(
        r(r#"app "v={revision}""#, evil).unwrap(),
        r#"app "v=\$(touch x)\`id\`\"'\\;""#
    );
    assert_eq!(
        r("app 'v={revision}'", evil).unwrap(),
        r#"app 'v=$(touch x)`id`"'\''\;'"#
    );
    // Quotes that are closed again: back outside.
    assert_eq!(r(r#"a "x" {port}"#, "").unwrap(), r#"a "x" '8080'"#);
    assert_eq!(r(r#"a 'x"' {port}"#, "").unwrap(), r#"a 'x"' '8080'"#);
    assert_eq!(r(r#"a "it's" {port}"#, "").unwrap(), r#"a "it's" '8080'"#);
    assert_eq!(r(r#"a \" {port}"#, "").unwrap(), r#"a \" '8080'"#);
    // A substitution at the top level ends where it ends.
    assert_eq!(
        r("a $(date +%s) {port}", "").unwrap(),
        "a $(date +%s) '8080'"
    );
    // Nothing in a comment runs: the placeholder stays as text.
    assert_eq!(
        r("a {port} # was {revision}", "v\n1").unwrap(),
        "a '8080' # was {revision}"
    );
}

#[test]
fn places_where_no_quoting_is_safe_are_refused() {
    for (t, place) in [
        ("a $(echo {revision})", "inside a command substitution"),
        ("a \"$(echo {revision})\"", "inside a command substitution"),
        ("a $(( {revision} + 1 ))", "inside a command substitution"),
        ("a `echo {revision}`", "inside backquotes"),
        (
            "a \"$(x)\" {revision}",
            "after a command substitution inside double quotes",
        ),
        (
            "a \"`x`\" {revision}",
            "after a command substitution inside double quotes",
        ),
        ("a \\{revision}", "right after a backslash"),
        ("a \"\\{revision}\"", "right after a backslash"),
        ("a ${revision}", "right after '$'"),
        ("a \"${revision}\"", "right after '$'"),
        ("a $'{revision}'", "inside $'…' quotes"),
        ("cat <<EOF\n{revision}\nEOF", "in a here-document"),
    ] {
        match r(t, "v1") {
            Err(RenderError::Unsafe {
                placeholder,
                place: p,
            }) => {
                assert_eq!(placeholder, "revision", "{t}");
                assert!(p.starts_with(place), "{t}: {p}");
            }
            other => panic!("{t:?}: {other:?}"),
        }
        assert_eq!(check(t).len(), 1, "{t}");
    }
    // Back outside a top-level substitution or backquotes, all is well.
    assert!(r("a `date` $(date) {revision}", "v1").is_ok());
}

#[test]
fn unknown_unclosed_and_nul_are_errors() {
    let e = r("app {prot}", "v1").unwrap_err();
    assert_eq!(e, RenderError::Unknown("prot".into()));
    assert_eq!(
        e.to_string(),
        "unknown placeholder {prot}; known: {port}, {revision}, {instance}, {service}, {release_dir}, {address}"
    );
    assert_eq!(r("app {port", "v1").unwrap_err(), RenderError::Unclosed);
    assert_eq!(
        r("app {revision}", "a\0b").unwrap_err(),
        RenderError::Nul("revision".into())
    );
    // check lists every problem.
    assert_eq!(
        check("a {x} {port} `{revision}` {y"),
        vec![
            RenderError::Unknown("x".into()),
            RenderError::Unsafe {
                placeholder: "revision".into(),
                place: "inside backquotes"
            },
            RenderError::Unclosed
        ]
    );
    assert!(check("handoff sample-app --port {port} --version {revision}").is_empty());
}

/// Where a piece of a generated word stands, and what it is.
#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Value,
}

#[derive(Debug, Clone, Copy)]
enum Quoting {
    Bare,
    Single,
    Double,
}

/// A word of pieces in one quoting: `(quoting, pieces)`.
type Word = Vec<(Quoting, Vec<Piece>)>;

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        "[A-Za-z0-9=:,./_-]{1,6}".prop_map(Piece::Lit),
        Just(Piece::Value),
    ]
}

fn word() -> impl Strategy<Value = Word> {
    let part = (
        prop_oneof![
            Just(Quoting::Bare),
            Just(Quoting::Single),
            Just(Quoting::Double)
        ],
        prop::collection::vec(piece(), 1..4),
    );
    prop::collection::vec(part, 1..4)
}

/// The template of `words` (placeholder `{revision}`) and the words the
/// shell must see once `value` is in place.
fn template_and_expected(words: &[Word], value: &str) -> (String, Vec<String>) {
    let mut template = String::from("app");
    let mut expected = vec!["app".to_string()];
    for w in words {
        template.push(' ');
        let mut want = String::new();
        for (q, pieces) in w {
            let (open, close) = match q {
                Quoting::Bare => ("", ""),
                Quoting::Single => ("'", "'"),
                Quoting::Double => ("\"", "\""),
            };
            template.push_str(open);
            for p in pieces {
                match p {
                    Piece::Lit(l) => {
                        template.push_str(l);
                        want.push_str(l);
                    }
                    Piece::Value => {
                        template.push_str("{revision}");
                        want.push_str(value);
                    }
                }
            }
            template.push_str(close);
        }
        expected.push(want);
    }
    (template, expected)
}

/// Values full of what shells care about.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\0]*",
        prop::collection::vec(
            prop_oneof![
                Just("'"),
                Just("\""),
                Just("\\"),
                Just("$("),
                Just(")"),
                Just("`"),
                Just("$HOME"),
                Just("${x}"),
                Just(";"),
                Just("&&"),
                Just("|"),
                Just("\n"),
                Just(" "),
                Just("\t"),
                Just("#"),
                Just("*"),
                Just("~"),
                Just("'\\''"),
                Just("a"),
                Just("é"),
            ],
            0..12
        )
        .prop_map(|v| v.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The rendered command has exactly the template's words, with the
    /// value in place of the placeholder, whatever the value holds.
    #[test]
    fn values_never_change_the_word_structure(
        words in prop::collection::vec(word(), 1..4),
        value in nasty(),
    ) {
        let (template, expected) = template_and_expected(&words, &value);
        let rendered = render(&template, &values(&value)).unwrap();
        let got = shlex::split(&rendered);
        prop_assert_eq!(got, Some(expected), "template {:?} rendered {:?}", template, rendered);
    }

    /// Whatever the template, rendering returns (an error or a command)
    /// and `check` agrees with `render` about whether there is a problem.
    #[test]
    fn any_template_renders_or_errs_without_panic(template in "\\PC{0,40}|[{}$()`'\"\\\\#<a-z \n]{0,40}") {
        let rendered = render(&template, &values("v1"));
        prop_assert_eq!(rendered.is_err(), !check(&template).is_empty());
    }
}

proptest! {
    // Each case runs a real shell: few of them.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The real /bin/sh sees the same words (printf prints each one,
    /// NUL-terminated) and runs nothing of the value.
    #[test]
    fn the_real_shell_sees_the_same_words(
        words in prop::collection::vec(word(), 1..3),
        value in nasty(),
    ) {
        let (template, mut expected) = template_and_expected(&words, &value);
        let template = template.replacen("app", "printf '%s\\0'", 1);
        expected.remove(0);
        let rendered = render(&template, &values(&value)).unwrap();
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("exec {rendered}"))
            .env("HOME", "/nonexistent-home")
            .output()
            .unwrap();
        prop_assert!(out.status.success(), "{:?}: {}", rendered, String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_string)
            .collect();
        prop_assert_eq!(got, expected, "rendered {:?}", rendered);
    }
}

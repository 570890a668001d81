use super::*;

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/handoff/handoff.toml"), text)
}

fn problems(text: &str) -> Vec<ConfigProblem> {
    match p(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn static_service_with_defaults() {
    let c = p(r#"
[services.api]
listen = "127.0.0.1:8081"
targets = ["127.0.0.1:9001", "localhost:9002"]
"#)
    .unwrap();
    let s = &c.services["api"];
    assert_eq!(s.listen, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(
        s.backend,
        Backend::Static {
            targets: vec![
                "127.0.0.1:9001".parse().unwrap(),
                "127.0.0.1:9002".parse().unwrap()
            ]
        }
    );
    assert_eq!(s.health.path, "/healthz");
    assert_eq!(s.health.interval, defaults::HEALTH_INTERVAL);
    assert_eq!(s.drain.timeout, defaults::DRAIN_TIMEOUT);
    assert_eq!(c.server.admin, defaults::ADMIN.parse().unwrap());
    // state_dir is relative to the config file, not the working directory.
    assert_eq!(c.server.state_dir, Path::new("/etc/handoff/.handoff"));
}

#[test]
fn design_md_example_parses() {
    let c = p(r#"
[server]
admin = "127.0.0.1:9900"
state_dir = ".handoff"

[services.web]
listen = "127.0.0.1:8080"
revision = "v1"
instances = 4
command = "handoff sample-app --port {port} --version {revision}"
strategy = "in-place"

[services.web.health]
path = "/healthz"
interval = "1s"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 2
min_healthy_time = "5s"

[services.web.drain]
timeout = "30s"

[services.web.in_place]
batch = "50%"
min_healthy = "50%"

[services.web.blue_green]
traffic_steps = [50]
bake = "5s"
retention = "10m"

[services.api]
listen = "127.0.0.1:8081"
targets = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#)
    .unwrap();
    let web = &c.services["web"];
    assert_eq!(web.strategy, Strategy::InPlace);
    assert_eq!(web.in_place.batch, Amount::Percent(50).into());
    assert_eq!(
        web.blue_green.retention,
        std::time::Duration::from_secs(600)
    );
    match &web.backend {
        Backend::Managed(m) => assert_eq!(m.instances, 4),
        b => panic!("{b:?}"),
    }
}

#[test]
fn every_problem_is_listed_with_line_and_key() {
    let text = r#"[server]
admin = "127.0.0.1:9900"

[services.web]
listen = "127.0.0.1:80800"
targets = ["127.0.0.1:9001"]
helth_path = "/x"

[services.web.health]
interval = "5 parsecs"
healthy_threshold = 0
intervall = "1s"
"#;
    let ps = problems(text);
    let find = |key: &str| {
        ps.iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {ps:#?}"))
    };
    assert_eq!(find("services.web.listen").line, 5);
    assert_eq!(find("services.web.helth_path").line, 7);
    assert_eq!(find("services.web.health.interval").line, 10);
    assert_eq!(find("services.web.health.healthy_threshold").line, 11);
    let typo = find("services.web.health.intervall");
    assert_eq!(typo.line, 12);
    assert!(
        typo.message.contains("did you mean 'interval'"),
        "{}",
        typo.message
    );
    assert_eq!(ps.len(), 5, "{ps:#?}");
    // The rendered error names the file on every line.
    let rendered = p(text).unwrap_err().to_string();
    assert!(
        rendered.contains("/etc/handoff/handoff.toml:10:"),
        "{rendered}"
    );
}

#[test]
fn syntax_and_type_errors_are_located() {
    match p("[services.web]\nlisten = \n") {
        Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    match p("[services.web]\nlisten = \"127.0.0.1:1\"\ninstances = \"four\"\n") {
        Err(ConfigError::Syntax { line, message, .. }) => {
            assert_eq!(line, 3);
            assert!(message.contains("integer"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn conflicting_and_missing_pieces() {
    let ps = problems(
        r#"
[services.a]
listen = "127.0.0.1:8080"
targets = ["127.0.0.1:1", "127.0.0.1:1"]
[services.b]
listen = "127.0.0.1:8080"
targets = ["127.0.0.1:2"]
[services.c]
listen = "127.0.0.1:8082"
[services.d]
listen = "127.0.0.1:8083"
targets = ["127.0.0.1:3"]
command = "x"
[services.e]
listen = "127.0.0.1:8084"
command = "app --port {prot}"
"#,
    );
    let msgs: Vec<String> = ps
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
    let has = |s: &str| msgs.iter().any(|m| m.contains(s));
    assert!(
        has("services.a.targets.1: 127.0.0.1:1 is listed twice"),
        "{msgs:#?}"
    );
    assert!(
        has("already the listen address of service 'a'"),
        "{msgs:#?}"
    );
    assert!(has("services.c: has no targets"), "{msgs:#?}");
    assert!(has("not both"), "{msgs:#?}");
    assert!(has("unknown placeholder {prot}"), "{msgs:#?}");
    assert!(has("missing `revision`"), "{msgs:#?}");
}

#[test]
fn in_place_floor_is_checked_up_front() {
    let ps = problems(
        r#"
[services.web]
listen = "127.0.0.1:8080"
revision = "v1"
instances = 4
command = "app {port}"
[services.web.in_place]
batch = 3
min_healthy = "50%"
"#,
    );
    assert!(
        ps[0]
            .message
            .contains("leaves 1 in service, below min_healthy 50%"),
        "{ps:?}"
    );
}

#[test]
fn amounts() {
    assert_eq!(Amount::Percent(50).of(4, true), 2);
    assert_eq!(Amount::Percent(50).of(3, true), 2);
    assert_eq!(Amount::Percent(50).of(3, false), 1);
    assert_eq!(Amount::Count(1).of(10, true), 1);
    assert!(validate::parse_amount("150%").is_err());
    assert!(validate::parse_amount("half").is_err());
}

#[test]
fn auto_batch_headroom_and_capacity() {
    let ok = "[services.web]\nlisten = \"127.0.0.1:8080\"\nrevision = \"v1\"\ninstances = 4\ncommand = \"app {port}\"\n\
        [services.web.in_place]\nbatch = \"auto\"\nheadroom = \"50%\"\ninstance_capacity = 250\n";
    let c = parse(Path::new("/x/handoff.toml"), ok).unwrap();
    let ip = &c.services["web"].in_place;
    assert_eq!(ip.batch, Batch::Auto);
    assert_eq!((ip.headroom, ip.instance_capacity), (50, Some(250)));
    let c = parse(
        Path::new("/x/handoff.toml"),
        &ok.replace("headroom = \"50%\"\ninstance_capacity = 250\n", ""),
    )
    .unwrap();
    assert_eq!(c.services["web"].in_place.headroom, 30);
    assert_eq!(c.services["web"].in_place.instance_capacity, None);
    let bad = ok
        .replace("\"50%\"", "\"lots\"")
        .replace("250", "0")
        .replace("\"auto\"", "\"most\"");
    let e = parse(Path::new("/x/handoff.toml"), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services.web.in_place.headroom: 'lots' is not a percentage"),
        "{e}"
    );
    assert!(e.contains("services.web.in_place.instance_capacity"), "{e}");
    assert!(
        e.contains("services.web.in_place.batch: 'most' is neither a count"),
        "{e}"
    );
    assert_eq!(parse_batch("auto"), Ok(Batch::Auto));
    assert_eq!(parse_batch("25%"), Ok(Batch::Amount(Amount::Percent(25))));
    assert!(parse_batch("x").unwrap_err().contains("nor \"auto\""));
}

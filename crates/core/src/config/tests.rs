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
    assert_eq!(s.listen, Some("127.0.0.1:8081".parse().unwrap()));
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
fn syntax_errors_are_located() {
    match p("[services.web]\nlisten = \n") {
        Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn type_errors_are_problems_like_any_other_with_their_key() {
    let text = r#"[server]
workers = "2"

[services.web]
listen = 8080
revision = 1
instances = "4"
command = "app --port {port}"
stop_grace = 10
strategy = "sideways"

[services.web.health]
interval = 1.5
enabled = "yes"
healthy_threshold = 0

[services.web.in_place]
batch = true
headroom = 30

[services.web.blue_green]
traffic_steps = [50, "all"]

[services.web.hooks]
before_install = ["echo", "hi"]

[services.api]
listen = "127.0.0.1:8081"
targets = "127.0.0.1:9001"
health = "/healthz"
"#;
    let ps = problems(text);
    let got: Vec<String> = ps
        .iter()
        .map(|p| format!("{}:{}: {}: {}", p.line, p.col, p.key, p.message))
        .collect();
    let want = [
        "2:1: server.workers: expected an integer, found string \"2\"; write 2 without quotes",
        "5:1: services.web.listen: expected a string, found integer 8080; write it in quotes: \"8080\"",
        "6:1: services.web.revision: expected a string, found integer 1",
        "7:1: services.web.instances: expected an integer, found string \"4\"",
        "9:1: services.web.stop_grace: needs a unit, e.g. \"10s\"",
        "10:1: services.web.strategy: unknown strategy 'sideways'",
        "13:1: services.web.health.interval: needs a unit, e.g. \"1.5s\"",
        "14:1: services.web.health.enabled: expected true or false, found string \"yes\"",
        "15:1: services.web.health.healthy_threshold: must be between 1 and 100, got 0",
        "18:1: services.web.in_place.batch: expected a count or a percentage",
        "19:1: services.web.in_place.headroom: needs a percent sign, e.g. \"30%\"",
        "22:1: services.web.blue_green.traffic_steps: expected an array of integers, found array [50, \"all\"]",
        "25:1: services.web.hooks.before_install: expected a string, found array",
        "29:1: services.api.targets: expected an array of strings, found string \"127.0.0.1:9001\"",
        "30:1: services.api.health: expected a table, found string \"/healthz\"",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.starts_with(w)), "no {w:?} in {got:#?}");
    }
    // Nothing else: a key of the wrong type counts as present (no "missing
    // `revision`"), and no check runs on a default put in its place.
    assert_eq!(got.len(), want.len(), "{got:#?}");
    let rendered = p(text).unwrap_err().to_string();
    assert!(
        rendered.contains(
            "/etc/handoff/handoff.toml:6:1: services.web.revision: expected a string, found integer 1"
        ),
        "{rendered}"
    );
    // A table of the wrong type is reported, and its siblings still are.
    let ps = problems("[services]\nweb = 1\n[services.api]\nlisten = \"x\"\ntargets = []\n");
    let msgs: Vec<String> = ps
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
    assert!(
        msgs.contains(&"services.web: expected a table, found integer 1".to_string()),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("services.api.listen: 'x' is not an address")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("services.api.targets: is empty")),
        "{msgs:#?}"
    );
}

#[test]
fn a_bare_number_duration_asks_for_a_unit() {
    let base = "[services.web]\nlisten = \"127.0.0.1:8080\"\ntargets = [\"127.0.0.1:9001\"]\n[services.web.drain]\n";
    let ps = problems(&format!("{base}timeout = 10\n"));
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(
        (ps[0].line, ps[0].key.as_str(), ps[0].message.as_str()),
        (
            5,
            "services.web.drain.timeout",
            "needs a unit, e.g. \"10s\""
        )
    );
    // In quotes it is the duration parser's own message.
    let ps = problems(&format!("{base}timeout = \"10\"\n"));
    assert!(ps[0].message.contains("unit"), "{ps:#?}");
    assert!(p(&format!("{base}timeout = \"10s\"\n")).is_ok());
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
        has("is already service 'a''s; services share a listen address when each has its own `domains` or `path_prefix`"),
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

#[test]
fn ids_follow_the_one_rule_and_are_located() {
    let text = "[services.web]\nlisten = \"127.0.0.1:8080\"\nrevision = \"$(touch /tmp/x)\"\n\
        instances = 1\ncommand = \"app {port}\"\n\n[services.\"my.app\"]\nlisten = \"127.0.0.1:8081\"\n\
        targets = [\"127.0.0.1:9001\"]\n";
    let ps = problems(text);
    let rev = ps
        .iter()
        .find(|p| p.key == "services.web.revision")
        .unwrap_or_else(|| panic!("{ps:#?}"));
    assert_eq!((rev.line, rev.col), (3, 1));
    assert!(
        rev.message.starts_with(
            "'$(touch /tmp/x)' is not a valid revision id (it starts with '$'): use letters"
        ),
        "{}",
        rev.message
    );
    let svc = ps
        .iter()
        .find(|p| p.key == "services.\"my.app\"")
        .unwrap_or_else(|| panic!("{ps:#?}"));
    assert_eq!(svc.line, 7, "{svc:?}");
    assert!(
        svc.message.contains("'.' is not allowed"),
        "{}",
        svc.message
    );
    let rendered = p(text).unwrap_err().to_string();
    assert!(
        rendered.contains("/etc/handoff/handoff.toml:3:1: services.web.revision: '$(touch"),
        "{rendered}"
    );
    // Usual ids pass, and a long one is refused with its length, not pasted whole.
    let ok = text
        .replace("$(touch /tmp/x)", "1.4.2+build.7")
        .replace("\"my.app\"", "my-app");
    assert!(p(&ok).is_ok());
    let long = ok.replace("1.4.2+build.7", &"a".repeat(5000));
    let e = p(&long).unwrap_err().to_string();
    assert!(e.contains("it is 5000 characters long"), "{e}");
    assert!(e.len() < 600, "{e}");
}

#[test]
fn command_placeholders_where_no_value_is_safe_are_refused() {
    let base = "[services.web]\nlisten = \"127.0.0.1:8080\"\nrevision = \"v1\"\ninstances = 1\n";
    let ps = problems(&format!(
        "{base}command = \"app --port {{port}} --v \\\"$(echo {{revision}})\\\" {{address}}\"\n"
    ));
    assert_eq!(ps.len(), 2, "{ps:#?}");
    assert_eq!(
        (ps[0].key.as_str(), ps[0].line),
        ("services.web.command", 5)
    );
    assert!(
        ps[0]
            .message
            .starts_with("placeholder {revision} is inside a command substitution"),
        "{}",
        ps[0].message
    );
    // Where that substitution ends is not trusted: later ones are refused too.
    assert!(
        ps[1].message.starts_with(
            "placeholder {address} is after a command substitution inside double quotes"
        ),
        "{}",
        ps[1].message
    );
    // Quoted placeholders and {address} are fine.
    let ok = format!("{base}command = \"app --port {{port}} --v \\\"{{revision}}\\\" '{{release_dir}}' {{address}}\"\n");
    assert!(p(&ok).is_ok(), "{:?}", p(&ok));
}

/// `(key, message)` of every problem, for tests that look for several.
fn keyed(text: &str) -> Vec<(String, String)> {
    problems(text)
        .into_iter()
        .map(|p| (p.key, p.message))
        .collect()
}

/// The one problem at `key`, whose message must contain `says`.
#[track_caller]
fn has(ps: &[(String, String)], key: &str, says: &str) {
    assert!(
        ps.iter().any(|(k, m)| k == key && m.contains(says)),
        "no {key}: …{says}… in {ps:#?}"
    );
}

const HOSTS: &str = r#"
[hosts.h1]
address = "root@10.0.0.11"

[hosts.h2]
address = "deploy@10.0.0.12:2222"
known_hosts = "keys/known_hosts"
dir = "/srv/handoff"

[hosts.spare]
address = "10.0.0.13"
"#;

fn web(keys: &str) -> String {
    format!(
        "{HOSTS}\n[services.web]\nlisten = \"127.0.0.1:8080\"\nrevision = \"v1\"\n\
         command = \"app --address {{address}} --port {{port}}\"\n{keys}"
    )
}

#[test]
fn hosts_are_parsed_and_instances_follow_them() {
    let identity = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let text = web(
        "hosts = [\"h2\", \"h1\"]\ninstances_per_host = 2\non_host_failure = \"pause\"\n\
         [services.web.hooks]\nonce_host = \"h1\"\nmigrate_expand = \"./migrate up\"\n",
    )
    .replace(
        "[hosts.h1]\n",
        &format!("[hosts.h1]\nidentity = \"{identity}\"\n"),
    );
    let c = p(&text).unwrap();
    assert_eq!(
        c.hosts.keys().collect::<Vec<_>>(),
        ["h1", "h2", "spare"],
        "a host no service uses is kept"
    );
    let h1 = &c.hosts["h1"];
    assert_eq!(
        h1,
        &Host {
            name: "h1".into(),
            address: "root@10.0.0.11".into(),
            user: Some("root".into()),
            hostname: "10.0.0.11".into(),
            port: 22,
            ip: "10.0.0.11".parse().unwrap(),
            identity: Some(PathBuf::from(identity)),
            known_hosts: None,
            dir: PathBuf::from(defaults::HOST_DIR),
        }
    );
    let h2 = &c.hosts["h2"];
    assert_eq!((h2.user.as_deref(), h2.port), (Some("deploy"), 2222));
    // Relative to the config file's directory.
    assert_eq!(
        h2.known_hosts.as_deref(),
        Some(Path::new("/etc/handoff/keys/known_hosts"))
    );
    assert_eq!(h2.dir, Path::new("/srv/handoff"));
    assert_eq!(c.hosts["spare"].user, None);
    let Backend::Managed(m) = &c.services["web"].backend else {
        panic!("{:?}", c.services["web"].backend)
    };
    assert_eq!(m.hosts, ["h2", "h1"]);
    assert_eq!((m.instances_per_host, m.instances), (2, 4));
    assert_eq!(m.on_host_failure, OnHostFailure::Pause);
    assert_eq!(m.once_host.as_deref(), Some("h1"));
    // `hooks.once_host` is not a hook.
    let hooks = &c.services["web"].hooks;
    assert_eq!(
        hooks.commands.keys().collect::<Vec<_>>(),
        ["migrate_expand"]
    );

    // Defaults; a matching `instances` may stay.
    let c = p(&web("hosts = [\"h1\", \"h2\"]\ninstances = 2\n")).unwrap();
    let Backend::Managed(m) = &c.services["web"].backend else {
        panic!()
    };
    assert_eq!((m.instances_per_host, m.instances), (1, 2));
    assert_eq!(m.on_host_failure, OnHostFailure::Rollback);
    assert_eq!(OnHostFailure::default().as_str(), "rollback");
    assert_eq!(OnHostFailure::Pause.as_str(), "pause");
    assert_eq!(m.once_host, None);
}

#[test]
fn configs_without_hosts_have_none() {
    let c = p(&web("instances = 3\n").replace(HOSTS, "")).unwrap();
    assert!(c.hosts.is_empty());
    let Backend::Managed(m) = &c.services["web"].backend else {
        panic!()
    };
    assert_eq!(m.instances, 3);
    assert!(m.hosts.is_empty() && m.once_host.is_none());
    assert_eq!(
        (m.instances_per_host, m.on_host_failure),
        (1, OnHostFailure::Rollback)
    );
}

#[test]
fn ipv6_and_names_resolve() {
    let text = web("hosts = [\"h1\", \"h2\"]\n")
        .replace("root@10.0.0.11", "root@[fd00::1]:2222")
        .replace("deploy@10.0.0.12:2222", "deploy@localhost");
    let c = p(&text).unwrap();
    let h1 = &c.hosts["h1"];
    assert_eq!(h1.hostname, "fd00::1");
    assert_eq!(h1.ip, "fd00::1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(
        (h1.port, h1.address.as_str()),
        (2222, "root@[fd00::1]:2222")
    );
    let h2 = &c.hosts["h2"];
    assert_eq!((h2.hostname.as_str(), h2.port), ("localhost", 22));
    assert!(h2.ip.is_loopback(), "{:?}", h2.ip);
}

#[test]
fn host_tables_problems_are_located_and_all_listed() {
    let text = r#"
[hosts.h1]
address = "root@10.0.0.1:99999"
identity = "/nonexistent/key"
dir = "var/lib/handoff"
user = "root"

[hosts.h2]
identity = "~/.ssh/id_ed25519"

[hosts."bad.name"]
address = "10.0.0.3"

[hosts.h4]
address = "root@fd00::1"
known_hosts = ""

[hosts.h5]
address = "ops@no-such-host.invalid"

[hosts.h6]
address = 22

[services.web]
listen = "127.0.0.1:8080"
targets = ["127.0.0.1:9001"]
"#;
    let ps = problems(text);
    let got: Vec<(String, String)> = ps
        .iter()
        .map(|p| (p.key.clone(), p.message.clone()))
        .collect();
    has(&got, "hosts.h1.address", "'99999' is not a port (1-65535)");
    has(&got, "hosts.h1.identity", "/nonexistent/key does not exist");
    has(&got, "hosts.h1.dir", "must be an absolute path on the host");
    has(
        &got,
        "hosts.h1.user",
        "unknown key 'user'; this table takes: address, identity, known_hosts, dir",
    );
    has(&got, "hosts.h2", "missing `address`");
    has(&got, "hosts.h2.identity", "'~' is not expanded");
    has(
        &got,
        "hosts.\"bad.name\"",
        "not a valid host name ('.' is not allowed)",
    );
    has(&got, "hosts.h4.address", "an IPv6 address goes in brackets");
    has(&got, "hosts.h4.known_hosts", "is empty");
    has(
        &got,
        "hosts.h5.address",
        "cannot resolve 'no-such-host.invalid'",
    );
    has(
        &got,
        "hosts.h6.address",
        "expected a string, found integer 22",
    );
    assert_eq!(got.len(), 11, "{got:#?}");
    let line = |k: &str| ps.iter().find(|p| p.key == k).unwrap().line;
    assert_eq!(line("hosts.h1.address"), 3);
    assert_eq!(line("hosts.h1.user"), 6);
    assert_eq!(line("hosts.h2"), 8);
    assert_eq!(line("hosts.\"bad.name\""), 11);
    // A typo gets the nearest key.
    let ps = keyed(
        &web("hosts = [\"h1\"]\n").replace("[hosts.h1]\n", "[hosts.h1]\nknown_host = \"k\"\n"),
    );
    has(&ps, "hosts.h1.known_host", "did you mean 'known_hosts'?");
    let ps = keyed(&format!(
        "hosts = 1\n{}",
        web("hosts = [\"h1\"]\n").replace(HOSTS, "")
    ));
    has(&ps, "hosts", "expected a table, found integer 1");
}

#[test]
fn service_hosts_must_name_defined_hosts_once() {
    let ps = keyed(&web("hosts = [\"h1\", \"h3\", \"h1\"]\n"));
    has(
        &ps,
        "services.web.hosts.1",
        "no host 'h3'; the hosts defined are h1, h2, spare",
    );
    has(&ps, "services.web.hosts.2", "'h1' is listed twice");
    assert_eq!(ps.len(), 2, "{ps:#?}");
    let ps = keyed(&web("hosts = [\"h1\"]\n").replace(HOSTS, ""));
    has(
        &ps,
        "services.web.hosts.0",
        "no host 'h1': this file defines no hosts; add a [hosts.h1] table",
    );
    let ps = keyed(&web("hosts = []\n"));
    has(&ps, "services.web.hosts", "is empty");
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let ps = keyed(&web("hosts = \"h1\"\n"));
    has(&ps, "services.web.hosts", "expected an array of strings");
    assert_eq!(ps.len(), 1, "no `instances` missing: {ps:#?}");
    // A host whose own table is wrong is reported there only.
    let ps = keyed(&web("hosts = [\"h1\"]\n").replace("root@10.0.0.11", "root@"));
    has(&ps, "hosts.h1.address", "has no host");
    assert_eq!(ps.len(), 1, "{ps:#?}");
    // Fixed targets do not go with hosts.
    let ps = keyed(&format!(
        "{HOSTS}\n[services.api]\nlisten = \"127.0.0.1:8081\"\ntargets = [\"127.0.0.1:9001\"]\nhosts = [\"h1\"]\n"
    ));
    has(&ps, "services.api.targets", "`hosts`), not both");
}

#[test]
fn instances_with_hosts_follow_them() {
    let ps = keyed(&web(
        "hosts = [\"h1\", \"h2\"]\ninstances_per_host = 2\ninstances = 3\n",
    ));
    has(
        &ps,
        "services.web.instances",
        "is 3, but 2 hosts × instances_per_host 2 make 4; remove `instances`",
    );
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let ps = keyed(&web("hosts = [\"h1\"]\ninstances_per_host = 65\n"));
    has(
        &ps,
        "services.web.instances_per_host",
        "must be between 1 and 64, got 65",
    );
    assert_eq!(ps.len(), 1, "{ps:#?}");
    let ps = keyed(&web("hosts = [\"h1\"]\ninstances_per_host = 0\n"));
    has(
        &ps,
        "services.web.instances_per_host",
        "must be between 1 and 64, got 0",
    );
    let ps = keyed(&web("hosts = [\"h1\"]\non_host_failure = \"retry\"\n"));
    has(
        &ps,
        "services.web.on_host_failure",
        "unknown value 'retry'; use rollback or pause",
    );
    // The in-place floor is checked against the derived count.
    let ps = keyed(&web(
        "hosts = [\"h1\", \"h2\"]\n[services.web.in_place]\nbatch = 2\nmin_healthy = 1\n",
    ));
    has(
        &ps,
        "services.web.in_place.min_healthy",
        "batch 2 of 2 instances leaves 0",
    );
}

#[test]
fn host_keys_are_refused_without_hosts() {
    let ps = keyed(
        &web(
            "instances = 2\ninstances_per_host = 2\non_host_failure = \"rollback\"\n\
             [services.web.hooks]\nonce_host = \"h1\"\n",
        )
        .replace(HOSTS, ""),
    );
    has(&ps, "services.web.instances_per_host", "only with `hosts`");
    has(&ps, "services.web.on_host_failure", "only with `hosts`");
    has(&ps, "services.web.hooks.once_host", "only with `hosts`");
    assert_eq!(ps.len(), 3, "{ps:#?}");
    // `instances` is still required without hosts.
    let ps = keyed(&web("").replace(HOSTS, ""));
    has(&ps, "services.web", "missing `instances`");
    // A fixed-target service may have hooks, but no once_host.
    let ps = keyed(
        "[services.api]\nlisten = \"127.0.0.1:8081\"\ntargets = [\"127.0.0.1:9001\"]\n\
         [services.api.hooks]\nonce_host = \"h1\"\nonce_hots = \"x\"\n",
    );
    has(&ps, "services.api.hooks.once_host", "only with `hosts`");
    has(
        &ps,
        "services.api.hooks.once_hots",
        "did you mean 'once_host'?",
    );
    assert_eq!(ps.len(), 2, "{ps:#?}");
}

#[test]
fn once_host_is_one_of_the_services_hosts() {
    let ps = keyed(&web(
        "hosts = [\"h1\", \"h2\"]\n[services.web.hooks]\nonce_host = \"spare\"\n",
    ));
    has(
        &ps,
        "services.web.hooks.once_host",
        "'spare' is not one of this service's hosts (h1, h2)",
    );
    assert_eq!(ps.len(), 1, "{ps:#?}");
}

mod properties {
    use proptest::prelude::*;

    use super::{p, Config, ConfigError};

    const VALID: &str = r#"[server]
admin = "127.0.0.1:9900"
state_dir = ".handoff"

[services.web]
listen = "127.0.0.1:8080"
revision = "v1"
instances = 4
command = "handoff sample-app --port {port} --version {revision}"

[services.web.health]
interval = "1s"
healthy_threshold = 2

[services.web.in_place]
batch = "50%"

[services.web.blue_green]
traffic_steps = [10, 50]

[services.web.hooks]
before_install = "echo hi"

[services.api]
listen = "127.0.0.1:8081"
targets = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

    /// Pieces that make TOML interesting to a parser.
    fn snippet() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("[".to_string()),
            Just("]".to_string()),
            Just("[[".to_string()),
            Just("\"".to_string()),
            Just("'''".to_string()),
            Just("\"\"\"".to_string()),
            Just("=".to_string()),
            Just("\n".to_string()),
            Just(".".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just("#".to_string()),
            Just("\\".to_string()),
            Just("é".to_string()),
            Just("💥".to_string()),
            Just("-1".to_string()),
            Just("1e999".to_string()),
            Just("99999999999999999999".to_string()),
            Just("true".to_string()),
            Just("[services.x]\n".to_string()),
            Just("listen = \"127.0.0.1:0\"\n".to_string()),
            Just("revision = \"$(id)\"\n".to_string()),
            Just("command = \"a {nope}\"\n".to_string()),
            "[a-z_.]{1,12}",
            "\\PC{0,8}",
        ]
    }

    /// One edit of the text at a char boundary: insert, delete or replace.
    fn mutate(text: &str, at: usize, len: usize, kind: u8, with: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let at = at % (chars.len() + 1);
        let end = (at + len % 16).min(chars.len());
        let (a, b): (String, String) =
            (chars[..at].iter().collect(), chars[end..].iter().collect());
        let mid: String = chars[at..end].iter().collect();
        match kind % 3 {
            0 => format!("{a}{with}{mid}{b}"),
            1 => format!("{a}{b}"),
            _ => format!("{a}{with}{b}"),
        }
    }

    /// Every error is located: a syntax error at a line of the text, every
    /// problem of an invalid config with a line, a column and a key.
    fn assert_located(text: &str, r: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
        let lines = text.lines().count() + 1;
        match r {
            Ok(_) => {}
            Err(ConfigError::Syntax {
                line, col, message, ..
            }) => {
                prop_assert!(
                    line >= 1 && line <= lines && col >= 1,
                    "{line}:{col} of {lines}: {message}"
                );
                prop_assert!(!message.is_empty());
            }
            Err(ConfigError::Invalid { problems, .. }) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(
                        p.line >= 1 && p.line <= lines && p.col >= 1,
                        "{p:?} of {lines}"
                    );
                    prop_assert!(!p.key.is_empty() && !p.message.is_empty(), "{p:?}");
                }
            }
            Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "parse never reads: {e}"),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_configs_never_panic_and_errors_are_located(
            edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>(), snippet()), 1..6)
        ) {
            let mut text = VALID.to_string();
            for (at, len, kind, with) in &edits {
                text = mutate(&text, *at, *len, *kind, with);
            }
            assert_located(&text, p(&text))?;
        }

        #[test]
        fn arbitrary_text_never_panics_and_errors_are_located(text in "\\PC{0,200}|[\\[\\]=\"'a-z0-9_. \n{}#]{0,200}") {
            assert_located(&text, p(&text))?;
        }
    }
}

const HAPROXY: &str = "[services.web]\nrevision = \"v1\"\ninstances = 2\ncommand = \"app {port}\"\n\
    [services.web.balancer]\nkind = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"web\"\n";

#[test]
fn a_service_behind_haproxy_needs_no_listen() {
    let c = p(HAPROXY).unwrap();
    let s = &c.services["web"];
    assert_eq!(s.listen, None);
    assert_eq!(
        s.balancer,
        Balancer::Haproxy {
            socket: "/run/haproxy/admin.sock".into(),
            backend: "web".into()
        }
    );
    // The default is handoff's own proxy, which needs `listen`.
    let c =
        p("[services.web]\nlisten = \"127.0.0.1:8080\"\ntargets = [\"127.0.0.1:9001\"]\n").unwrap();
    assert_eq!(c.services["web"].balancer, Balancer::Builtin);
}

#[test]
fn balancer_mistakes_are_located_and_say_what_to_do() {
    let said = |text: &str| -> Vec<String> {
        problems(text)
            .into_iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    };
    let m = said(&HAPROXY.replace(
        "[services.web]\n",
        "[services.web]\nlisten = \"127.0.0.1:8080\"\n",
    ));
    assert!(
        m.iter()
            .any(|m| m.starts_with("services.web.listen: is for handoff's own proxy")),
        "{m:?}"
    );
    let m = said(&HAPROXY.replace("socket = \"/run/haproxy/admin.sock\"\n", ""));
    assert!(m.iter().any(|m| m.contains("missing `socket`")), "{m:?}");
    let m = said(&HAPROXY.replace("backend = \"web\"\n", "backend = \"a b\"\n"));
    assert!(
        m.iter()
            .any(|m| m.starts_with("services.web.balancer.backend: 'a b'")),
        "{m:?}"
    );
    let m = said(&HAPROXY.replace("kind = \"haproxy\"", "kind = \"nginx\""));
    assert!(
        m.iter().any(|m| m.contains("unknown balancer 'nginx'")),
        "{m:?}"
    );
    let m = said(
        "[services.web]\nlisten = \"127.0.0.1:8080\"\ntargets = [\"127.0.0.1:9001\"]\n\
        [services.web.balancer]\nsocket = \"/x\"\n",
    );
    assert!(
        m.iter()
            .any(|m| m.starts_with("services.web.balancer.socket: is for kind")),
        "{m:?}"
    );
    let m = said("[services.web]\ntargets = [\"127.0.0.1:9001\"]\n[services.web.balancer]\nkind = \"haproxy\"\nsocket = \"/x\"\nbackend = \"web\"\n");
    assert!(
        m.iter()
            .any(|m| m.starts_with("services.web.targets: fixed `targets`")),
        "{m:?}"
    );
    let two = format!(
        "{HAPROXY}{}",
        HAPROXY.replace("services.web", "services.api")
    );
    let m = said(&two);
    assert!(m.iter().any(|m| m.contains("is also service")), "{m:?}");
    let m = said(&HAPROXY.replace("kind = \"haproxy\"", "kind = \"haproxy\"\nweight = 3"));
    assert!(m.iter().any(|m| m.contains("weight")), "{m:?}");
}

#[test]
fn services_share_a_listen_address_by_domain_and_path() {
    let c = p(r#"
[services.app]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9001"]
domains = ["App.Example.com", "*.app.example.com."]
[services.api]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9002"]
domains = ["app.example.com"]
path_prefix = "/api/"
[services.other]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9003"]
"#)
    .unwrap();
    assert_eq!(
        c.services["app"].domains,
        ["app.example.com", "*.app.example.com"]
    );
    assert_eq!(c.services["api"].path_prefix.as_deref(), Some("/api"));
    assert!(c.services["other"].domains.is_empty());
    let said: Vec<String> = problems(
        r#"
[services.a]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9001"]
domains = ["x.example.com", "bad_name.com", "y.com:443", "*.*.z.com"]
path_prefix = "api"
[services.b]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9002"]
domains = ["x.example.com"]
[services.c]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9003"]
domains = []
"#,
    )
    .into_iter()
    .map(|p| format!("{}: {}", p.key, p.message))
    .collect();
    let has = |s: &str| said.iter().any(|m| m.contains(s));
    assert!(
        has("services.a.domains.1: 'bad_name.com' is not a host name"),
        "{said:#?}"
    );
    assert!(
        has("services.a.domains.2: 'y.com:443' has a port"),
        "{said:#?}"
    );
    assert!(
        has("services.a.domains.3: '*.*.z.com' is not a host name"),
        "{said:#?}"
    );
    assert!(
        has("services.a.path_prefix: 'api' is not a path prefix"),
        "{said:#?}"
    );
    assert!(has("services.c.domains: is empty"), "{said:#?}");
    // a's x.example.com (path / since its prefix is refused) is b's too.
    assert!(
        has("x.example.com on 127.0.0.1:8443 is already service 'a''s"),
        "{said:#?}"
    );
}

#[test]
fn acme_certificates_live_in_the_state_dir() {
    let c = p(r#"
[server]
state_dir = "/var/lib/handoff"
[server.acme]
directory = "https://acme.example/dir"
email = "ops@example.com"
[services.app]
listen = "0.0.0.0:443"
domains = ["app.example.com"]
targets = ["127.0.0.1:9001"]
[services.app.tls]
acme = true
"#)
    .unwrap();
    let a = c.server.acme.clone().unwrap();
    assert_eq!(a.directory, "https://acme.example/dir");
    assert_eq!(a.email.as_deref(), Some("ops@example.com"));
    assert_eq!(a.ca, None);
    assert_eq!(a.http_listen, "0.0.0.0:80".parse().unwrap());
    let t = c.services["app"].tls.clone().unwrap();
    assert!(t.acme);
    assert_eq!(
        t.cert,
        Path::new("/var/lib/handoff/acme/certs/app/cert.pem")
    );
    assert_eq!(t.key, Path::new("/var/lib/handoff/acme/certs/app/key.pem"));
}

#[test]
fn acme_mistakes_are_each_named() {
    let said: Vec<String> = problems(
        r#"
[server.acme]
directory = "http://acme.example/dir"
email = "ops"
http_listen = "127.0.0.1:8443"
[services.a]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9001"]
domains = ["*.a.example"]
[services.a.tls]
acme = true
[services.b]
listen = "127.0.0.1:9443"
targets = ["127.0.0.1:9002"]
[services.b.tls]
acme = true
cert = "b.pem"
key = "b.key"
"#,
    )
    .into_iter()
    .map(|p| format!("{}: {}", p.key, p.message))
    .collect();
    let has = |s: &str| said.iter().any(|m| m.contains(s));
    assert!(
        has("server.acme.directory: 'http://acme.example/dir' is not an https URL"),
        "{said:#?}"
    );
    assert!(
        has("server.acme.email: 'ops' is not an email address"),
        "{said:#?}"
    );
    // Without a valid [server.acme], acme = true has no CA to ask.
    assert!(has("services.a.tls.acme: needs a CA to ask"), "{said:#?}");
    assert!(
        has("services.b.tls: has `acme = true` and `cert`/`key`"),
        "{said:#?}"
    );
    let said: Vec<String> = problems(
        r#"
[server.acme]
directory = "https://acme.example/dir"
http_listen = "127.0.0.1:8443"
ca = "nope.pem"
[services.a]
listen = "127.0.0.1:8443"
targets = ["127.0.0.1:9001"]
domains = ["*.a.example"]
[services.a.tls]
acme = true
[services.c]
listen = "127.0.0.1:9443"
targets = ["127.0.0.1:9001"]
[services.c.tls]
acme = true
"#,
    )
    .into_iter()
    .map(|p| format!("{}: {}", p.key, p.message))
    .collect();
    let has = |s: &str| said.iter().any(|m| m.contains(s));
    assert!(
        has("services.a.domains: '*.a.example': HTTP-01 cannot prove a wildcard name"),
        "{said:#?}"
    );
    assert!(
        has("services.a.listen: 127.0.0.1:8443 is also server.acme.http_listen"),
        "{said:#?}"
    );
    assert!(
        has("services.c.domains: is needed with `tls.acme = true`"),
        "{said:#?}"
    );
    assert!(
        has("server.acme.ca: /etc/handoff/nope.pem does not exist"),
        "{said:#?}"
    );
}

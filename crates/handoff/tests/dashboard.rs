//! The dashboard in a real browser (Debian's Chromium through chromedriver):
//! open it on a daemon running a sample-app service, enter the token, start
//! a blue/green deployment from the page, and watch green instances appear,
//! the weight move and the deployment finish. Saves a screenshot.

mod common;

use std::time::Duration;

use common::scenario::*;
use common::webdriver::{self, Browser};
use common::*;

/// Outside CI a machine without Chromium skips this test, loudly; in CI
/// (`.ci/run` installs it) a missing browser is a failure.
fn browser_or_skip() -> Option<Browser> {
    match webdriver::available() {
        Ok(()) => Some(Browser::start()),
        Err(why) if std::env::var_os("CI").is_some() => panic!("{why}"),
        Err(why) => {
            eprintln!("SKIPPED the browser test: {why}");
            None
        }
    }
}

fn count(b: &Browser, css: &str) -> u64 {
    b.js(&format!(
        "return document.querySelectorAll({}).length;",
        serde_json::to_string(css).unwrap()
    ))
    .as_u64()
    .unwrap_or(0)
}

#[test]
fn a_blue_green_deploy_started_and_watched_from_the_dashboard() {
    let Some(b) = browser_or_skip() else { return };
    let env = setup_with(2, "300ms", "[50]", "");
    let l = load(env.web, 2);
    l.wait_for_requests(50);
    let home = format!("http://{}/", env.admin);

    // A link with a wrong token: refused, said so, and the token is gone
    // from the address bar at once.
    b.goto(&format!("{home}#token=not-the-token"));
    b.wait_until(
        "the refusal",
        Duration::from_secs(10),
        "return document.querySelector('#login-error').textContent.includes('refused');",
    );
    assert!(!b.url().contains("token"), "{}", b.url());

    // The token entered once, by hand.
    b.type_into("#token", &token(env.dir.path()));
    b.click("#login-form button[type=submit]");
    b.wait_until(
        "both v1 instances, healthy, in the blue group",
        Duration::from_secs(10),
        "return document.querySelectorAll('.tile[data-revision=\"v1\"][data-state=\"healthy\"][data-group=\"blue\"]').length === 2;",
    );
    b.wait_until(
        "the live stream",
        Duration::from_secs(10),
        "return document.querySelector('#conn').dataset.state === 'live';",
    );
    // Every weight the green group shows, as it changes.
    b.js("window.__weights = []; new MutationObserver(() => { \
            const g = document.querySelector('.group[data-group=\"green\"]'); \
            if (g && window.__weights[window.__weights.length - 1] !== g.dataset.weight) window.__weights.push(g.dataset.weight); \
          }).observe(document.body, {subtree: true, attributes: true, childList: true}); return true;");

    // Deploy v2 blue/green from the page, through its confirmation.
    b.type_into("#rev-web", "v2");
    b.click("#strategy-web option[value=\"blue-green\"]");
    b.click("[data-service=web] [data-action=deploy]");
    b.wait_until(
        "the confirmation",
        Duration::from_secs(5),
        "return document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent === 'Deploy web to v2 (blue-green)?';",
    );
    b.click("#confirm-ok");

    b.wait_until(
        "green instances of v2",
        Duration::from_secs(20),
        "return document.querySelectorAll('.tile[data-revision=\"v2\"][data-group=\"green\"]').length === 2;",
    );
    b.wait_until(
        "the deployment to finish (blue retained)",
        Duration::from_secs(30),
        "return document.querySelector('[data-service=web] [data-role=status]')?.dataset.status === 'retained';",
    );
    b.wait_until(
        "all traffic on green",
        Duration::from_secs(5),
        "return document.querySelector('.group[data-group=\"green\"]').dataset.weight === '100' \
           && document.querySelector('.group[data-group=\"blue\"]').dataset.weight === '0';",
    );
    let weights = b.js("return window.__weights;");
    let weights: Vec<&str> = weights
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    assert!(
        weights.contains(&"50") && weights.last() == Some(&"100"),
        "the green weight moved {weights:?}"
    );
    // The timeline: every step of the plan up to the retention is done or
    // current, and the capacity chart and request split are drawn.
    assert!(count(&b, "[data-role=timeline] li") >= 5);
    assert_eq!(count(&b, "[data-role=timeline] li[data-step=current]"), 1);
    assert_eq!(count(&b, "[data-role=capacity] path.live"), 1);
    assert_eq!(count(&b, "[data-role=split] span"), 2);
    b.wait_until(
        "the deployment in the history",
        Duration::from_secs(5),
        "return !!document.querySelector('[data-role=history] [data-action=report][data-id=\"web@1\"]');",
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    b.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());

    // The report view from the history, with its plan beside it.
    b.click("[data-role=history] [data-action=report][data-id=\"web@1\"]");
    b.wait_until(
        "the report",
        Duration::from_secs(5),
        "return document.querySelector('#report').open && document.querySelector('#report-body').textContent.includes('Predicted beside measured');",
    );
    b.click("#report-close");

    // Blue is retained: Rollback on the page is the instant flip.
    b.click("[data-service=web] [data-action=rollback]");
    b.wait_until(
        "the rollback's confirmation",
        Duration::from_secs(5),
        "return document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent === 'Rollback web?';",
    );
    b.click("#confirm-ok");
    b.wait_until(
        "traffic back on blue, the deployment rolled back",
        Duration::from_secs(15),
        "return document.querySelector('.group[data-group=\"blue\"]')?.dataset.weight === '100' \
           && document.querySelector('[data-service=web] [data-role=status]')?.dataset.status === 'rolled-back';",
    );
    drop(b);
    // The load saw v1 again after v2, and nothing failed.
    let seen = l.finish();
    assert_eq!(seen.last().map(|(v, _)| v.as_str()), Some("v1"));
    assert!(seen.iter().any(|(v, _)| v == "v2"));
    stop(env);
}

fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_dashboard_is_public_holds_no_data_and_serve_prints_its_link() {
    let mut env = setup(1, "");
    let link = env.daemon.wait_line("dashboard ", Duration::from_secs(5));
    assert_eq!(
        link,
        format!(
            "dashboard http://{}/#token={}",
            env.admin,
            token(env.dir.path())
        )
    );
    let page = raw_get(env.admin, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let head = page.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    assert!(page.contains("<script src=\"/ui/app.js\" defer></script>"));
    // Small, and nothing from elsewhere.
    let js = raw_get(env.admin, "/ui/app.js");
    let css = raw_get(env.admin, "/ui/style.css");
    assert!(js.starts_with("HTTP/1.1 200") && css.starts_with("HTTP/1.1 200"));
    assert!(js.len() + css.len() + page.len() < 64 * 1024);
    for text in [&page, &js, &css] {
        // The SVG namespace is a name, not a request.
        let text = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("https://") && !text.contains("http://"),
            "an external reference"
        );
    }
    // The data behind it still needs the token.
    assert!(raw_get(env.admin, "/services").starts_with("HTTP/1.1 401"));
    stop(env);
}

#[test]
fn an_open_event_stream_ends_cleanly_when_the_daemon_stops() {
    use std::io::{Read, Write};
    let env = setup(1, "");
    let mut s = std::net::TcpStream::connect(env.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        token(env.dir.path())
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    // The head comes at once, with a first event: a browser's fetch learns
    // it is connected without waiting for news.
    while !String::from_utf8_lossy(&got).contains("event: ready\ndata: connected\n\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the ready event");
        got.extend_from_slice(&buf[..n]);
    }
    env.daemon.signal(libc::SIGTERM);
    // Read to the end: a stream the server ends has its last chunk; one the
    // shutdown cut would stop short of it.
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the stream did not end: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.ends_with("\r\n0\r\n\r\n"), "cut, not ended: {text:?}");
    stop(env);
}

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

/// Page-side helpers for the checks below: the hue (0..360) and
/// saturation (0..1) of a computed `rgb(…)` colour, and whether it reads as
/// red or green (error or success) — revision colours must not.
const HUES: &str = "window.__hue = (c) => { \
      const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map((x) => x / 255); \
      const max = Math.max(r, g, b), min = Math.min(r, g, b), d = max - min; \
      if (!d) return { h: 0, s: 0 }; \
      let h = max === r ? ((g - b) / d) % 6 : max === g ? (b - r) / d + 2 : (r - g) / d + 4; \
      h = (h * 60 + 360) % 360; \
      const l = (max + min) / 2; \
      return { h, s: d / (1 - Math.abs(2 * l - 1)) }; }; \
    window.__redOrGreen = (c) => { const { h, s } = window.__hue(c); \
      return s > 0.15 && (h < 20 || h > 340 || (h > 75 && h < 165)); }; return true;";

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
    // It speaks to a person at a browser, not to a script setting headers.
    let login = b.js("return document.querySelector('#login').innerText;");
    let login = login.as_str().unwrap_or_default();
    assert!(
        login.contains("handoff serve") && login.contains("STATE_DIR/token"),
        "{login}"
    );
    assert!(
        !login.contains("Authorization") && !login.contains("Bearer"),
        "{login}"
    );
    // A laptop screen: everything below must fit 1280 px.
    b.set_window_size(1280, 900);

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

    // The address the proxy listens on, not the configured port 0.
    let meta =
        b.js("return document.querySelector('[data-service=web] [data-role=meta]').textContent;");
    let meta = meta.as_str().unwrap_or_default();
    assert!(!meta.contains(":0 ") && !meta.ends_with(":0"), "{meta}");
    // The revision field is empty, its placeholder plainly an example.
    let placeholder =
        b.js("const i = document.querySelector('#rev-web'); return i.value + '|' + i.placeholder;");
    assert_eq!(placeholder.as_str(), Some("|revision id, e.g. v2"));

    // Deploy v2 blue/green from the page, through its confirmation.
    b.type_into("#rev-web", "v2");
    b.click("#strategy-web option[value=\"blue-green\"]");
    b.click("[data-service=web] [data-action=deploy]");
    b.wait_until(
        "the confirmation",
        Duration::from_secs(5),
        "return document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent === 'Deploy web to v2 (blue-green)?';",
    );
    // With the plan's headline: how long, when v2 serves, the floor.
    b.wait_until(
        "the plan's headline in the confirmation",
        Duration::from_secs(5),
        "const t = document.querySelector('#confirm-detail [data-role=headline]')?.textContent || ''; \
         return /about \\d/.test(t) && t.includes('v2 alone serves after') && t.includes('capacity stays at 2/2');",
    );
    b.click("#confirm-ok");

    b.wait_until(
        "green instances of v2",
        Duration::from_secs(20),
        "return document.querySelectorAll('.tile[data-revision=\"v2\"][data-group=\"green\"]').length === 2;",
    );
    // Revision colours: two, neither red nor green (those read as error
    // and success), each in the legend.
    b.js(HUES);
    let fills = b.js("return [...document.querySelectorAll('.tile rect')].map((r) => [r.closest('.tile').dataset.revision, getComputedStyle(r).fill]);");
    let fills: Vec<(String, String)> = serde_json::from_value(fills).unwrap();
    assert!(fills.len() >= 4, "{fills:?}");
    for (rev, fill) in &fills {
        let bad = b.js(&format!(
            "return window.__redOrGreen({});",
            serde_json::to_string(fill).unwrap()
        ));
        assert_eq!(
            bad,
            serde_json::Value::Bool(false),
            "{rev} is drawn {fill}, red or green"
        );
    }
    let v1 = fills.iter().find(|f| f.0 == "v1").map(|f| &f.1);
    let v2 = fills.iter().find(|f| f.0 == "v2").map(|f| &f.1);
    assert!(
        v1.is_some() && v1 != v2,
        "v1 and v2 share a colour: {fills:?}"
    );
    assert_eq!(
        count(
            &b,
            "[data-service=web] [data-role=legend] [data-revision] .swatch"
        ),
        2
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
    // The chart's scale is 0..desired, with its axes labelled: full
    // capacity is the top line.
    let labels = b.js("return [...document.querySelectorAll('[data-role=capacity] text')].map((t) => t.textContent);");
    let labels: Vec<String> = serde_json::from_value(labels).unwrap();
    assert!(
        labels.iter().any(|l| l == "2")
            && labels.iter().any(|l| l == "0")
            && labels.iter().any(|l| l == "0 s"),
        "{labels:?}"
    );
    let top = b.js("const c = document.querySelector('[data-role=capacity]'); \
        const line = c.querySelector('line.desired'), live = c.querySelector('path.live'); \
        return [+line.getAttribute('y1'), +live.getAttribute('d').match(/[\\d.]+$/)[0]];");
    assert_eq!(
        top[0], top[1],
        "the measured line ends at full capacity, on the desired line: {top}"
    );
    assert_eq!(count(&b, "[data-role=split] span"), 2);
    b.wait_until(
        "the deployment in the history",
        Duration::from_secs(5),
        "return !!document.querySelector('[data-role=history] [data-action=report][data-id=\"web@1\"]');",
    );

    // The history fits a 1280 px window: no column cut off.
    b.set_window_size(1280, 900);
    let fit = b.js("const w = document.querySelector('[data-service=web] [data-role=history] .table-wrap'); return [w.scrollWidth, w.clientWidth, window.innerWidth];");
    assert!(
        fit[0].as_u64() <= fit[1].as_u64() && fit[2].as_u64() > Some(1200),
        "the history overflows: {fit}"
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
    // The steps the rollback cut short say they did not run.
    b.wait_until(
        "the steps after the retention marked not run",
        Duration::from_secs(5),
        "const s = [...document.querySelectorAll('[data-role=timeline] li')].map((l) => l.dataset.step); \
         return s.includes('skipped') && !s.includes('pending') && !s.includes('current');",
    );
    // The history names why it was rolled back.
    b.wait_until(
        "the rolled-back row's reason",
        Duration::from_secs(5),
        "return (document.querySelector('[data-role=history] [data-reason-for=\"web@1\"]')?.textContent || '').includes('rolled back');",
    );

    // After a page load the last deployment is shown, not \"No deployment
    // yet.\" above its own history.
    b.goto(&home);
    b.wait_until(
        "the last deployment after a reload",
        Duration::from_secs(10),
        "return document.querySelector('[data-service=web] [data-role=history] [data-id=\"web@1\"]') \
           && document.querySelector('[data-service=web] [data-role=status]')?.dataset.status === 'rolled-back';",
    );
    let text = b.js("return document.body.innerText;");
    let text = text.as_str().unwrap_or_default();
    assert!(!text.contains("No deployment yet"), "{text}");
    assert!(
        text.contains("Last deployment") || text.contains("LAST DEPLOYMENT"),
        "{text}"
    );
    let fit = b.js("const w = document.querySelector('[data-service=web] [data-role=history] .table-wrap'); return [w.scrollWidth, w.clientWidth];");
    assert!(
        fit[0].as_u64() <= fit[1].as_u64(),
        "the history overflows: {fit}"
    );
    // The load saw v1 again after v2, and nothing failed.
    let seen = l.finish();
    assert_eq!(seen.last().map(|(v, _)| v.as_str()), Some("v1"));
    assert!(seen.iter().any(|(v, _)| v == "v2"));

    // An instance that dies is listed with why until it is replaced: one
    // with no target would not show in the picture at all.
    assert_eq!(count(&b, "[data-service=web] [data-role=failing] li"), 0);
    let (pid, _, name) = handoff_runtime::procfs::marked_processes(&env.dir.path().join("state"))
        .into_iter()
        .next()
        .expect("an instance");
    // SAFETY: kill(2) on an instance this test's daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    b.wait_until(
        "the dead instance listed with its reason",
        Duration::from_secs(10),
        &format!(
            "const li = document.querySelector('[data-service=web] [data-role=failing] li[data-instance=\"{name}\"]'); \
             return !!li && /exited|killed|signal|unhealthy|refused/.test(li.textContent);"
        ),
    );
    b.wait_until(
        "the list empty again once it is replaced",
        Duration::from_secs(20),
        "return document.querySelectorAll('[data-service=web] [data-role=failing] li').length === 0;",
    );
    drop(b);
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

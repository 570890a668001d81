//! Request bodies streamed to targets that answer early, or never read
//! them, or are not there: the client always gets its answer, no body is
//! read as a request, and connections are reused only when both sides
//! are at a request boundary.

mod common;

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use handoff_core::config::Balance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A target that answers 413 as soon as it has the head and never reads
/// the body (then shuts its side, or holds the connection open): the
/// client gets the answer at once, not after the response timeout, even
/// while it is still sending, and (on the fast path) its connection ends
/// once the rest of the body has stopped going up (the response timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_streamed_body_reaches_the_client() {
    for fast_path in [true, false] {
        for close_write in [false, true] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let target = tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut b = [0u8; 1024];
                        match s.read(&mut b).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                            _ => break,
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large",
                        )
                        .await;
                    if close_write {
                        let _ = s.shutdown().await;
                    }
                    held.push(s);
                }
            });
            let mut h = health(1000);
            h.enabled = false;
            let mut cfg = service_cfg(Balance::RoundRobin, h);
            cfg.proxy.fast_path = fast_path;
            // A body nobody reads stops the upload after this long.
            cfg.proxy.response_timeout = Duration::from_secs(2);
            let p = TestProxy::start(cfg).await;
            p.add_at(addr, "early");
            p.wait_healthy(1).await;

            const N: usize = 64 << 20;
            let s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                let head = format!("PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {N}\r\n\r\n");
                wr.write_all(head.as_bytes()).await?;
                let piece = vec![b'u'; 64 * 1024];
                for _ in 0..N / piece.len() {
                    wr.write_all(&piece).await?;
                }
                Ok::<_, std::io::Error>(())
            });
            let started = std::time::Instant::now();
            let mut got = Vec::new();
            let mut answered = None;
            let ended = tokio::time::timeout(Duration::from_secs(10), async {
                let mut b = [0u8; 4096];
                loop {
                    match rd.read(&mut b).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                        _ => return,
                    }
                    if got.ends_with(b"too large") {
                        answered.get_or_insert(started.elapsed());
                        if !fast_path {
                            return;
                        }
                    }
                }
            })
            .await;
            let text = String::from_utf8_lossy(&got);
            let what = format!("fast_path={fast_path} close_write={close_write}: {text}");
            assert!(text.starts_with("HTTP/1.1 413"), "{what}");
            assert!(text.ends_with("\r\n\r\ntoo large"), "{what}");
            // Before the body stops being sent, which waits for the
            // response timeout (2 s) with a target that does not read it.
            let answered = answered.unwrap();
            assert!(
                answered < Duration::from_millis(1500),
                "{answered:?} {what}"
            );
            if !fast_path {
                // hyper's path keeps the connection while its client half
                // waits to send the rest to a target that never reads it:
                // the answer arrived, and that is all it promises.
                target.abort();
                continue;
            }
            assert!(ended.is_ok(), "the connection did not end: {what}");
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            // The rest of the body is read and dropped for a while (so the
            // answer is not lost to a reset), then the connection ends: the
            // client's writes end too, one way or the other.
            tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .expect("the writer ends once the connection is closed")
                .unwrap()
                .ok();
            target.abort();
        }
    }
}

/// A body that is not forwarded (no service for its host) is never read
/// as the next request: the answer ends the connection. Before, a request
/// hidden in a large body reached a service the body was never meant for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_nobody_takes_is_not_read_as_a_request() {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.domains = vec!["real.test".into()];
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    let hidden = "GET /echo HTTP/1.1\r\nHost: real.test\r\n\r\n";
    let padded = format!("{hidden}{}", "p".repeat(20_000 - hidden.len()));
    for framing in ["Content-Length: 20000", "Transfer-Encoding: chunked"] {
        let req = format!("POST / HTTP/1.1\r\nHost: nosuch.test\r\n{framing}\r\n\r\n{padded}");
        let r = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{framing}: {r}");
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "{framing}: {r}");
        assert!(
            r.to_ascii_lowercase().contains("connection: close"),
            "{framing}: {r}"
        );
    }
    // `Connection: content-length` would hide the length from the target.
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: real.test\r\nConnection: content-length\r\nContent-Length: 20000\r\n\r\n{padded}"
    );
    let r = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
    // One answer: the POST's, its body echoed whole.
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("content-length: 20000\r\n"), "{r}");
    // The POST reached /echo, never the hidden GET.
    assert_eq!(a.hits.load(Relaxed), 1);
}

/// A target that answers as soon as it has the head and then reads the
/// body to drop it (nginx's `return` does): the rest of the body follows
/// the answer, and both connections carry the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_that_still_reads_the_body_keeps_the_connection() {
    let (addr, conns, target) = answering_early(Duration::ZERO).await;
    let mut h = health(1000);
    h.enabled = false;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, h)).await;
    p.add_at(addr, "early");
    p.wait_healthy(1).await;

    const N: usize = 4 << 20;
    let s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: {N}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        wr.write_all(&vec![b'u'; N]).await.unwrap();
        wr.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        wr
    });
    let mut got = Vec::new();
    let two = tokio::time::timeout(Duration::from_secs(10), async {
        let mut b = [0u8; 4096];
        while got.windows(2).filter(|w| w == b"ok").count() < 2 {
            match rd.read(&mut b).await {
                Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                _ => return,
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(two.is_ok(), "{text}");
    assert_eq!(text.matches("http/1.1 200 ok").count(), 2, "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    let _wr = writer.await.unwrap();
    // Both requests on one upstream connection.
    assert_eq!(conns.load(Relaxed), 1);
    target.abort();
}

/// An early answer while the body is still going up, then at once another
/// request: the connection that carries the first body is busy, and the
/// second request must not fail for it. (On hyper's path the busy
/// connection went back to the pool at the end of the answer, and the
/// next request, refused by it unsent, got a 502 when the service had one
/// target: 62 of ~75,000 64 KiB uploads in `bench/proxy.sh`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_an_early_answer_does_not_meet_a_busy_connection() {
    for fast_path in [true, false] {
        // Answers at once, then reads the rest of a body slowly.
        let (addr, _, target) = answering_early(Duration::from_millis(300)).await;
        let mut h = health(1000);
        h.enabled = false;
        let mut cfg = service_cfg(Balance::RoundRobin, h);
        cfg.proxy.fast_path = fast_path;
        let p = TestProxy::start(cfg).await;
        p.add_at(addr, "early");
        p.wait_healthy(1).await;

        const N: usize = 8 << 20;
        let first = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let (mut rd, mut wr) = first.into_split();
        let writer = tokio::spawn(async move {
            let head = format!("POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: {N}\r\n\r\n");
            wr.write_all(head.as_bytes()).await.unwrap();
            wr.write_all(&vec![b'u'; N]).await.unwrap();
            wr
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut b = [0u8; 4096];
            while !got.ends_with(b"ok") {
                match rd.read(&mut b).await {
                    Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                    _ => return,
                }
            }
        })
        .await
        .unwrap();
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // At once, while the first body still goes up.
        for i in 0..3 {
            let r = raw(
                p.addr,
                format!("POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n{i}").as_bytes(),
                Duration::from_secs(5),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 200"), "fast_path={fast_path}: {r}");
        }
        let _wr = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap();
        target.abort();
    }
}

/// Clients that send their bodies too slowly get 504 after the response
/// timeout, and the target is not blamed for it: with a passive-failure
/// threshold of one, it still serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_do_not_eject_a_healthy_target() {
    let a = upstream("a").await;
    let mut h = health(1000);
    h.passive_failures = 1;
    let mut cfg = service_cfg(Balance::RoundRobin, h);
    cfg.proxy.response_timeout = Duration::from_millis(300);
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    for framing in ["Content-Length: 100000", "Transfer-Encoding: chunked"] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let head = format!("POST /collect HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let first: &[u8] = if framing.starts_with("Content") {
            &[b'u'; 20_000]
        } else {
            b"5\r\nhello\r\n"
        };
        s.write_all(first).await.unwrap();
        // ...and nothing more.
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 504"), "{framing}: {text}");
        let (status, _) = Client::connect(p.addr).await.get("/").await.unwrap();
        assert_eq!(status, 200, "{framing}: the target was ejected");
    }
}

/// A target that answers `200 ok` as soon as it has a request's head,
/// then waits `pause` and reads the body (by `Content-Length`) to drop
/// it, and goes on with the next request: its address, the connections
/// it accepted, and its task.
async fn answering_early(
    pause: Duration,
) -> (
    std::net::SocketAddr,
    Arc<AtomicU32>,
    tokio::task::JoinHandle<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicU32::new(0));
    let counted = conns.clone();
    let target = tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            counted.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end);
                    let mut left: usize = head
                        .split("\r\n")
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    if left > 0 && !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    while left > 0 {
                        if buf.is_empty() {
                            let mut b = [0u8; 65536];
                            match s.read(&mut b).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                                _ => return,
                            }
                        }
                        let k = left.min(buf.len());
                        buf.drain(..k);
                        left -= k;
                    }
                }
            });
        }
    });
    (addr, conns, target)
}

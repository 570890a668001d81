use super::*;
use proptest::prelude::*;

fn fwd() -> Forwarded {
    Forwarded {
        peer: "10.1.2.3".parse().unwrap(),
        tls: false,
    }
}

fn req(raw: &str) -> (ReqParse, String) {
    let mut out = Vec::new();
    let r = parse_request(raw.as_bytes(), &fwd(), &mut out);
    (r, String::from_utf8(out).unwrap())
}

fn ready(raw: &str) -> (Req, String) {
    match req(raw) {
        (ReqParse::Ready(r), out) => (r, out),
        (other, _) => panic!("{raw:?} gave {other:?}"),
    }
}

#[test]
fn a_get_is_forwarded_with_forwarding_fields_and_without_hop_by_hop_ones() {
    let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: basic x\r\nTE: trailers\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\nGET /next";
    let (r, out) = ready(raw);
    assert_eq!(r.head_len, raw.len() - "GET /next".len());
    assert_eq!(&raw[r.host.clone()], "example.com");
    assert_eq!(&raw[r.path.clone()], "/a/b?x=1");
    assert!(r.idempotent && !r.head_method && !r.close);
    assert_eq!(
        out,
        "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: example.com\r\n\r\n"
    );
}

#[test]
fn forwarded_for_is_appended_to_every_earlier_hop() {
    let (_, out) = ready("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n");
    assert!(
        out.contains("x-forwarded-for: 1.1.1.1, 10.1.2.3\r\n"),
        "{out}"
    );
    let (_, out) = ready(
        "GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: h\r\nx-forwarded-for: 2.2.2.2\r\n\r\n",
    );
    assert!(
        out.contains("x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("orwarded-for").count(), 1, "{out}");
    let mut o = Vec::new();
    let tls = Forwarded {
        peer: "::ffff:127.0.0.1".parse().unwrap(),
        tls: true,
    };
    parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &tls, &mut o);
    let o = String::from_utf8(o).unwrap();
    assert!(
        o.contains("x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: https\r\n"),
        "{o}"
    );
}

#[test]
fn methods_and_connection_close_are_read() {
    let (r, _) = ready("HEAD / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n");
    assert!(r.head_method && r.idempotent && r.close);
    let (r, _) = ready("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    assert!(!r.idempotent);
    let (_, out) = ready("DELETE /x HTTP/1.1\r\nHost: h\r\ncontent-length:  0 \r\n\r\n");
    assert!(
        out.contains("content-length:  0 \r\n") || out.contains("content-length: 0"),
        "{out}"
    );
}

#[test]
fn a_small_body_is_taken_with_its_length_and_never_resent() {
    let (r, out) = ready("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.body, 5);
    assert_eq!(
        r.head_len,
        "PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n".len()
    );
    // PUT is idempotent, but a body is not sent twice (as on hyper's path).
    assert!(!r.idempotent);
    assert!(out.contains("Content-Length: 5\r\n"), "{out}");
    let at_limit =
        format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {MAX_SMALL_BODY}\r\n\r\n");
    assert_eq!(ready(&at_limit).0.body, MAX_SMALL_BODY);
}

#[test]
fn larger_and_chunked_bodies_are_streamed_after_the_head() {
    let over = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        MAX_SMALL_BODY + 1
    );
    let (r, out) = ready(&over);
    assert_eq!(r.body, 0);
    assert_eq!(r.stream, Some(Framing::Length(MAX_SMALL_BODY as u64 + 1)));
    assert!(!r.idempotent);
    assert!(out.contains(&format!("Content-Length: {}\r\n", MAX_SMALL_BODY + 1)));
    let (r, _) = ready("PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999\r\n\r\n");
    assert_eq!(r.stream, Some(Framing::Length(99_999_999_999)));

    let raw =
        "PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (r, out) = ready(raw);
    assert_eq!((r.body, r.stream), (0, Some(Framing::Chunked)));
    assert_eq!(&raw[r.head_len..r.head_len + 3], "5\r\n");
    // PUT is idempotent, but a body is not sent twice.
    assert!(!r.idempotent);
    assert_eq!(out.matches("ransfer-encoding").count(), 1, "{out}");
    assert!(out.contains("\r\ntransfer-encoding: chunked\r\n"), "{out}");
}

#[test]
fn what_the_fast_path_does_not_take_is_declined() {
    for raw in [
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 05\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 70000\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nConnection: x, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Name: x\r\nHost: h\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
    ] {
        assert_eq!(req(raw).0, ReqParse::Decline, "{raw:?}");
    }
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
    assert_eq!(req(&raw).0, ReqParse::Decline);
}

#[test]
fn a_head_in_pieces_is_partial_until_complete() {
    let raw = "GET /p HTTP/1.1\r\nHost: h\r\n\r\n";
    for cut in 0..raw.len() {
        assert_eq!(req(&raw[..cut]).0, ReqParse::Partial, "cut at {cut}");
    }
    ready(raw);
}

fn resp(raw: &str, head: bool, extra: Extra) -> (RespParse, String) {
    let mut out = Vec::new();
    let r = parse_response(raw.as_bytes(), head, &extra, &mut out);
    (r, String::from_utf8(out).unwrap())
}

fn plain() -> Extra {
    Extra {
        close: false,
        hsts: false,
    }
}

fn resp_ready(raw: &str, head: bool) -> (Resp, String) {
    match resp(raw, head, plain()) {
        (RespParse::Ready(r), out) => (r, out),
        (other, _) => panic!("{raw:?} gave {other:?}"),
    }
}

#[test]
fn response_framing_follows_rfc_9112() {
    let (r, out) = resp_ready(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        false,
    );
    assert_eq!(
        (r.status, r.framing, r.reusable),
        (200, Framing::Length(5), true)
    );
    assert_eq!(
        r.head_len,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n".len()
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 5\r\n\r\n"
    );

    let (r, out) = resp_ready(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        false,
    );
    assert_eq!((r.framing, r.reusable), (Framing::Chunked, true));
    assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");

    let (r, _) = resp_ready(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        false,
    );
    assert_eq!((r.framing, r.reusable), (Framing::Close, false));

    let (r, _) = resp_ready(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
    );
    assert_eq!((r.framing, r.reusable), (Framing::Chunked, false));

    let (r, out) = resp_ready("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false);
    assert_eq!((r.framing, r.reusable), (Framing::Close, false));
    assert!(out.contains("transfer-encoding: chunked"), "{out}");

    let (r, _) = resp_ready(
        "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n",
        false,
    );
    assert_eq!(r.framing, Framing::Length(7));

    let (r, _) = resp_ready(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        false,
    );
    assert!(!r.reusable);
    let (r, _) = resp_ready("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
    assert!(!r.reusable);
}

#[test]
fn bodiless_answers_keep_their_length_verbatim() {
    let (r, out) = resp_ready("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true);
    assert_eq!((r.framing, r.reusable), (Framing::None, true));
    assert!(out.contains("Content-Length: 1234\r\n"), "{out}");
    let (r, out) = resp_ready(
        "HTTP/1.1 503 Busy\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        true,
    );
    assert_eq!(r.framing, Framing::None);
    assert!(
        out.contains("Content-Length: 5\r\n") && !out.contains(": 6"),
        "{out}"
    );
    for raw in [
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    ] {
        assert_eq!(resp_ready(raw, false).0.framing, Framing::None, "{raw}");
    }
}

#[test]
fn bad_and_interim_responses() {
    for raw in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SMTP ready\r\n\r\n",
    ] {
        assert!(
            matches!(resp(raw, false, plain()).0, RespParse::Bad(_)),
            "{raw}"
        );
    }
    let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
    assert_eq!(
        resp(&format!("{interim}HTTP/1.1 200 OK\r\n"), false, plain()).0,
        RespParse::Interim(interim.len())
    );
    assert_eq!(
        resp("HTTP/1.1 200 OK\r\nA: b", false, plain()).0,
        RespParse::Partial
    );
}

#[test]
fn stopping_and_hsts_are_added_to_the_clients_head() {
    let extra = Extra {
        close: true,
        hsts: true,
    };
    let (_, out) = resp(
        "HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: 0\r\n\r\n",
        false,
        extra,
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nstrict-transport-security: max-age=31536000\r\nconnection: close\r\n\r\n"
    );
}

/// The data of a chunked body as written by the decoder.
fn unchunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let crlf = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..crlf]).ok()?, 16).ok()?;
        b = &b[crlf + 2..];
        if n == 0 {
            return (b == b"\r\n").then_some(data);
        }
        data.extend_from_slice(&b[..n]);
        if &b[n..n + 2] != b"\r\n" {
            return None;
        }
        b = &b[n + 2..];
    }
}

/// Feeds `input` in the pieces `cuts` makes; returns the output and
/// the bytes left unconsumed after the end of the body.
fn feed(f: Framing, input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize, bool), BodyError> {
    let mut d = Decoder::new(f);
    let mut out = Vec::new();
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    points.sort();
    points.push(input.len());
    for p in points {
        while at < p && !d.is_done() {
            let n = d.decode(&input[at..p], &mut out)?;
            at += n;
            if n == 0 {
                break;
            }
        }
    }
    Ok((out, input.len() - at, d.is_done()))
}

#[test]
fn chunked_bodies_decode_at_every_split() {
    let body = b"5;ext=1\r\nhello\r\n1 \r\n \r\n0\r\nTrailer: x\r\n\r\nNEXT";
    for cut in 0..body.len() {
        let (out, left, done) = feed(Framing::Chunked, body, &[cut]).unwrap();
        assert!(done, "cut {cut}");
        assert_eq!(left, 4, "cut {cut}");
        assert_eq!(unchunk(&out).unwrap(), b"hello ", "cut {cut}");
    }
}

#[test]
fn broken_chunked_bodies_are_errors() {
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"5\r\nhelloXX",
        b"5\nhello\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"10000000000000000\r\n",
        b"5 6\r\nhello\r\n0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"0\r\nTrailer: x\n",
        b"0\r\n\rX",
    ] {
        assert!(
            feed(Framing::Chunked, bad, &[]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Leading zeros do not count against the size; blanks before an
    // extension or CR are fine.
    for fine in [
        &b"000000000000000000005\r\nhello\r\n0\r\n\r\n"[..],
        b"5 \t ;a=b\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffff0 \r\n",
    ] {
        assert!(
            feed(Framing::Chunked, fine, &[]).is_ok(),
            "{:?}",
            String::from_utf8_lossy(fine)
        );
    }
    let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE + 1));
    assert!(feed(Framing::Chunked, long.as_bytes(), &[]).is_err());
}

#[test]
fn lengths_stop_at_the_end_and_close_delimited_bodies_end_at_eof() {
    let (out, left, done) = feed(Framing::Length(5), b"helloEXTRA", &[2]).unwrap();
    assert_eq!((out.as_slice(), left, done), (&b"hello"[..], 5, true));
    let mut d = Decoder::new(Framing::Length(5));
    let mut out = Vec::new();
    d.decode(b"hel", &mut out).unwrap();
    assert!(d.eof(&mut out).is_err());
    let mut d = Decoder::new(Framing::Close);
    let mut out = Vec::new();
    d.decode(b"abc", &mut out).unwrap();
    d.decode(b"", &mut out).unwrap();
    d.decode(b"de", &mut out).unwrap();
    d.eof(&mut out).unwrap();
    assert_eq!(unchunk(&out).unwrap(), b"abcde");
    assert!(Decoder::new(Framing::Length(0)).is_done());
    // A length body sent on as it is: counted, never past its end.
    let mut d = Decoder::new(Framing::Length(5));
    assert_eq!(d.passthrough(3), Some(3));
    d.advance(3);
    assert_eq!(d.passthrough(10), Some(2));
    d.advance(2);
    assert!(d.is_done());
    assert_eq!(d.passthrough(10), None);
    assert_eq!(Decoder::new(Framing::Chunked).passthrough(10), None);
    assert!(Decoder::new(Framing::None).is_done());
}

fn chunked(data: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i)
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        b.extend_from_slice(format!("{n:X}\r\n").as_bytes());
        b.extend_from_slice(&rest[..n]);
        b.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    b.extend_from_slice(b"0\r\n\r\n");
    b
}

#[test]
fn fields_are_classified_by_name_in_any_case() {
    let hop = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
    ];
    for n in hop {
        for name in [n.to_string(), n.to_ascii_uppercase()] {
            assert!(Field::of(&name).hop_by_hop(), "{name}");
        }
    }
    for (n, want) in [
        ("Host", Field::Host),
        ("CONTENT-LENGTH", Field::ContentLength),
        ("Expect", Field::Expect),
        ("X-Forwarded-For", Field::XForwardedFor),
        ("x-forwarded-proto", Field::XForwardedOurs),
        ("X-Forwarded-Host", Field::XForwardedOurs),
        ("Strict-Transport-Security", Field::Hsts),
        ("tE", Field::HopByHop),
        ("te-x", Field::Other),
        ("hosts", Field::Other),
        ("content-lengthx", Field::Other),
        ("x-forwarded-fo", Field::Other),
        ("", Field::Other),
    ] {
        assert!(Field::of(n) == want, "{n}");
        assert_eq!(
            Field::of(n).hop_by_hop(),
            hop.iter().any(|h| h.eq_ignore_ascii_case(n)),
            "{n}"
        );
    }
}

#[test]
fn the_clients_address_is_written_as_display_writes_it() {
    for ip in [
        "0.0.0.0",
        "10.1.2.3",
        "255.255.255.255",
        "127.0.0.1",
        "::1",
        "2001:db8::8a2e:370:7334",
        "::ffff:192.0.2.128",
        "fe80::1",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        let mut out = Vec::new();
        put_ip(&mut out, ip);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            ip.to_canonical().to_string()
        );
    }
}

#[test]
fn lengths_are_read_as_str_parse_reads_them() {
    for v in [
        "0",
        "7",
        "0010",
        "18446744073709551615",
        "18446744073709551616",
        "",
        "1a",
        "+1",
        "-1",
        " 1",
        "１",
    ] {
        let want = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u64>().ok())
            .flatten();
        assert_eq!(digits(v.as_bytes()), want, "{v:?}");
    }
    assert_eq!(canonical_length(b" 42 "), Some(42));
    assert_eq!(canonical_length(b"042"), None);
    assert_eq!(canonical_length(b"0"), Some(0));
    assert_eq!(
        canonical_length(b"999999999999999999"),
        Some(999_999_999_999_999_999)
    );
    assert_eq!(canonical_length(b"1000000000000000000"), None);
}

proptest! {
    #[test]
    fn any_chunking_and_any_split_gives_the_body_back(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1usize..200, 0..8),
        cuts in proptest::collection::vec(0usize..1000, 0..6),
    ) {
        let wire = chunked(&data, &sizes);
        let (out, left, done) = feed(Framing::Chunked, &wire, &cuts).unwrap();
        prop_assert!(done);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(unchunk(&out).unwrap(), data);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        input in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..4),
    ) {
        let _ = feed(Framing::Chunked, &input, &cuts);
        let _ = feed(Framing::Length(100), &input, &cuts);
        let mut out = Vec::new();
        let _ = parse_request(&input, &fwd(), &mut out);
        let _ = parse_response(&input, false, &plain(), &mut out);
    }

    #[test]
    fn any_address_is_written_as_display_writes_it(v4 in any::<u32>(), v6 in any::<u128>()) {
        for ip in [IpAddr::from(v4.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
            let mut out = Vec::new();
            put_ip(&mut out, ip);
            prop_assert_eq!(String::from_utf8(out).unwrap(), ip.to_canonical().to_string());
        }
    }

    #[test]
    fn any_digits_are_read_as_str_parse_reads_them(v in "[0-9]{1,22}") {
        prop_assert_eq!(digits(v.as_bytes()), v.parse::<u64>().ok());
    }
}

//! The HTTP/1.1 wire codec of the fast path ([`crate::fast`]): pure
//! functions over byte slices, no I/O, so every rule is unit-tested here.
//!
//! - [`parse_request`] reads a client's request head and, in the same pass,
//!   writes the head to send upstream (hop-by-hop fields dropped,
//!   `X-Forwarded-*` added), and says how its body is framed: none, small
//!   (sent with the head) or streamed ([`Req::stream`]). Anything the fast
//!   path does not take (an upgrade, `Expect`, HTTP/1.0, HTTP/2, a length
//!   or transfer coding it would have to judge, a malformed head) is
//!   *declined*: the connection then goes to hyper, which answers it as it
//!   always has.
//! - [`parse_response`] reads an upstream response head, decides its
//!   framing (RFC 9112 §6.3) and writes the head for the client.
//! - [`Decoder`] reads a body in any split and writes it out again: a
//!   length stays a length; chunked and close-delimited bodies go out
//!   chunked. Response bodies go through it to the client, streamed request
//!   bodies to the target.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;

use smallvec::SmallVec;

/// More header fields than this and the head is declined (hyper then
/// answers it under its own limit).
const MAX_HEADERS: usize = 100;
/// A request body up to this length (by `Content-Length`) is read whole and
/// sent with its head; a longer or chunked one is streamed after it.
pub(crate) const MAX_SMALL_BODY: usize = 16 * 1024;

/// What a client connection adds to each request it forwards.
pub(crate) struct Forwarded {
    pub peer: IpAddr,
    pub tls: bool,
}

#[derive(Debug, PartialEq)]
pub(crate) enum ReqParse {
    /// The head is not complete yet.
    Partial,
    /// Not for the fast path; hyper takes the connection from here.
    Decline,
    Ready(Req),
}

#[derive(Debug, PartialEq)]
pub(crate) struct Req {
    /// Bytes of the head in the buffer; what follows is the next request.
    pub head_len: usize,
    pub host: Range<usize>,
    pub path: Range<usize>,
    /// May be sent again after a target closed without answering: an
    /// idempotent method without a body (as on hyper's path).
    pub idempotent: bool,
    pub head_method: bool,
    /// The client asked to close after this request.
    pub close: bool,
    /// Bytes of body after the head, sent with it (`Content-Length`, at
    /// most [`MAX_SMALL_BODY`]).
    pub body: usize,
    /// A body streamed after the head instead: a longer `Content-Length`
    /// ([`Framing::Length`]) or `Transfer-Encoding: chunked`.
    pub stream: Option<Framing>,
}

/// A `Content-Length` the fast path takes: digits in their shortest form
/// (anything else is hyper's to judge), at most 18 of them (no overflow).
fn canonical_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.len() > 18 || (v.first() == Some(&b'0') && v.len() > 1) {
        return None;
    }
    digits(v)
}

/// A non-empty run of ASCII digits as a number; `None` for anything else
/// or on overflow. By hand: `str::parse` would first check UTF-8 again,
/// for every request and response (measured with callgrind).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Header fields parsed per head, left uninitialised until parsed:
/// initialising 100 of them is a 3.2 kB write per head.
type Fields<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

fn fields<'b>() -> Fields<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Writes `n` in decimal, without `fmt`'s machinery.
fn put_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes the client's address for `X-Forwarded-For`: an IPv4 address by
/// hand (it is written into every request, and `Display` costs about
/// 1,000 instructions), an IPv6 one with `Display`.
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            put_int(out, a);
            for o in [b, c, d] {
                out.push(b'.');
                put_int(out, o);
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn offset(buf: &[u8], s: &[u8]) -> Range<usize> {
    let start = s.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + s.len()
}

/// What the fast path does with a header field, by its name: each name is
/// compared once per head ([`classify`]), not once per rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Connection,
    ContentLength,
    TransferEncoding,
    Upgrade,
    /// The other hop-by-hop fields (RFC 9110 §7.6.1) and the old proxy ones.
    HopByHop,
    Host,
    Expect,
    XForwardedFor,
    /// `X-Forwarded-Proto` and `-Host`: what the client spoke to us is
    /// ours to say.
    XForwardedOurs,
    Hsts,
    Other,
}

impl Field {
    fn of(name: &str) -> Field {
        let is = |s: &str| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is("te") => Field::HopByHop,
            4 if is("host") => Field::Host,
            6 if is("expect") => Field::Expect,
            7 if is("trailer") => Field::HopByHop,
            7 if is("upgrade") => Field::Upgrade,
            10 if is("connection") => Field::Connection,
            10 if is("keep-alive") => Field::HopByHop,
            14 if is("content-length") => Field::ContentLength,
            15 if is("x-forwarded-for") => Field::XForwardedFor,
            16 if is("proxy-connection") => Field::HopByHop,
            16 if is("x-forwarded-host") => Field::XForwardedOurs,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            17 if is("x-forwarded-proto") => Field::XForwardedOurs,
            18 if is("proxy-authenticate") => Field::HopByHop,
            19 if is("proxy-authorization") => Field::HopByHop,
            25 if is("strict-transport-security") => Field::Hsts,
            _ => Field::Other,
        }
    }

    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Field::Connection | Field::TransferEncoding | Field::Upgrade | Field::HopByHop
        )
    }
}

/// Classifies every field of a head into `kinds` (same order), and
/// returns the tokens of its `Connection` fields: fields named there are
/// hop-by-hop too. Inline: nearly every head has one token (`keep-alive`,
/// `close`) or none, and this runs for every request and response.
fn classify<'a>(
    headers: &[httparse::Header<'a>],
    kinds: &mut [Field; MAX_HEADERS],
) -> SmallVec<[&'a [u8]; 4]> {
    let mut named = SmallVec::new();
    for (h, k) in headers.iter().zip(kinds.iter_mut()) {
        *k = Field::of(h.name);
        if *k == Field::Connection {
            named.extend(
                h.value
                    .split(|&b| b == b',')
                    .map(|t| t.trim_ascii())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    named
}

/// Writes a field as it came: `name: value`.
fn put_field(out: &mut Vec<u8>, h: &httparse::Header<'_>) {
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(h.value);
    out.extend_from_slice(b"\r\n");
}

fn named_in(tokens: &[&[u8]], name: &str) -> bool {
    tokens
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Parses a request head at the start of `buf`; when it is one the fast
/// path takes, `out` receives the head to send upstream.
pub(crate) fn parse_request(buf: &[u8], fwd: &Forwarded, out: &mut Vec<u8>) -> ReqParse {
    let mut fields = fields();
    let mut r = httparse::Request::new(&mut []);
    let head_len = match r.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ReqParse::Partial,
        // Malformed or too many fields: hyper answers (400/431).
        Err(_) => return ReqParse::Decline,
    };
    let (Some(method), Some(path), Some(1)) = (r.method, r.path, r.version) else {
        return ReqParse::Decline;
    };
    if method == "CONNECT" || !path.starts_with('/') {
        return ReqParse::Decline;
    }
    let mut kinds = [Field::Other; MAX_HEADERS];
    let tokens = classify(r.headers, &mut kinds);
    // `Connection: content-length` would drop from the upstream head the
    // very field this path frames the body by, and the target would read
    // the body as further requests: hyper's path judges such heads.
    if ["content-length", "transfer-encoding", "host"]
        .iter()
        .any(|n| named_in(&tokens, n))
    {
        return ReqParse::Decline;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut length = None;
    let mut chunked = false;
    for (h, &k) in r.headers.iter().zip(&kinds) {
        match k {
            Field::Host => {
                hosts += 1;
                host = Some(h.value);
            }
            // A second length, or one we would have to judge: hyper's
            // path, with its framing checks, takes it.
            Field::ContentLength => match canonical_length(h.value) {
                Some(n) if length.is_none() => length = Some(n),
                _ => return ReqParse::Decline,
            },
            Field::TransferEncoding => {
                // Only a lone `chunked`: other codings, or a list, are hyper's.
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return ReqParse::Decline;
                }
                chunked = true;
            }
            Field::Upgrade | Field::Expect => return ReqParse::Decline,
            _ => {}
        }
    }
    let (1, Some(host)) = (hosts, host) else {
        return ReqParse::Decline;
    };
    // Both framings at once is a smuggling attempt: hyper refuses it (400).
    let (body, stream) = match (length, chunked) {
        (Some(_), true) => return ReqParse::Decline,
        (None, true) => (0, Some(Framing::Chunked)),
        (Some(n), false) if n > MAX_SMALL_BODY as u64 => (0, Some(Framing::Length(n))),
        (Some(n), false) => (n as usize, None),
        (None, false) => (0, None),
    };
    let close = named_in(&tokens, "close");

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff: Option<&[u8]> = None;
    let mut xff_more = false;
    for (h, &k) in r.headers.iter().zip(&kinds) {
        if k.hop_by_hop() || named_in(&tokens, h.name) {
            continue;
        }
        match k {
            Field::XForwardedFor if xff.is_some() => xff_more = true,
            Field::XForwardedFor => xff = Some(h.value),
            Field::XForwardedOurs => {}
            _ => put_field(out, h),
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff_more {
        // Several fields are one list (RFC 9110 §5.3), in order.
        for (h, &k) in r.headers.iter().zip(&kinds) {
            if k == Field::XForwardedFor {
                out.extend_from_slice(h.value);
                out.extend_from_slice(b", ");
            }
        }
    } else if let Some(prev) = xff {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    put_ip(out, fwd.peer);
    if stream == Some(Framing::Chunked) {
        // Dropped above with the other hop-by-hop fields; the body is sent
        // chunked again (its chunks re-framed by the [`Decoder`]).
        out.extend_from_slice(b"\r\ntransfer-encoding: chunked");
    }
    out.extend_from_slice(if fwd.tls {
        b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: "
    } else {
        b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "
    });
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n\r\n");
    ReqParse::Ready(Req {
        head_len,
        host: offset(buf, host),
        path: offset(buf, path.as_bytes()),
        idempotent: body == 0
            && stream.is_none()
            && matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
        head_method: method == "HEAD",
        close,
        body,
        stream,
    })
}

/// How a response body is delimited on the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes: never reusable.
    Close,
}

#[derive(Debug, PartialEq)]
pub(crate) enum RespParse {
    Partial,
    /// An interim (1xx) head of this many bytes: skip it and read on.
    Interim(usize),
    /// Not a valid answer to this request: a 502.
    Bad(&'static str),
    Ready(Resp),
}

#[derive(Debug, PartialEq)]
pub(crate) struct Resp {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The connection may carry another request after this body.
    pub reusable: bool,
}

/// What the client's side of a response gets besides the upstream's head.
pub(crate) struct Extra {
    /// `Connection: close` (the client asked, or handoff is stopping).
    pub close: bool,
    /// `Strict-Transport-Security` for a TLS service with `hsts`.
    pub hsts: bool,
}

pub(crate) const HSTS: &[u8] = b"strict-transport-security: max-age=31536000\r\n";

/// Parses an upstream response head at the start of `buf`; when complete,
/// `out` receives the head for the client.
pub(crate) fn parse_response(
    buf: &[u8],
    head_method: bool,
    extra: &Extra,
    out: &mut Vec<u8>,
) -> RespParse {
    let mut fields = fields();
    let mut r = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut r,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return RespParse::Partial,
        Err(_) => return RespParse::Bad("malformed response head"),
    };
    let (Some(status), Some(version)) = (r.code, r.version) else {
        return RespParse::Bad("malformed response head");
    };
    if status == 101 {
        return RespParse::Bad("an upgrade nobody asked for");
    }
    if (100..200).contains(&status) {
        return RespParse::Interim(head_len);
    }
    let Ok(code) = http::StatusCode::from_u16(status) else {
        return RespParse::Bad("malformed status");
    };
    let mut kinds = [Field::Other; MAX_HEADERS];
    let tokens = classify(r.headers, &mut kinds);
    let no_body = head_method || status == 204 || status == 304;
    let mut te_chunked = None;
    let mut length: Option<u64> = None;
    // Without a body, no length delimits anything: relayed as it came.
    let framing_fields: &[httparse::Header<'_>] = if no_body { &[] } else { r.headers };
    for (h, &k) in framing_fields.iter().zip(&kinds) {
        if k == Field::TransferEncoding {
            // Only a final `chunked` delimits; anything else reads to close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            te_chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if k == Field::ContentLength {
            for v in h.value.split(|&b| b == b',') {
                let Some(n) = digits(v.trim_ascii()) else {
                    return RespParse::Bad("invalid content-length");
                };
                if length.is_some_and(|l| l != n) {
                    return RespParse::Bad("conflicting content-length");
                }
                length = Some(n);
            }
        }
    }
    let framing = if no_body {
        Framing::None
    } else {
        match (te_chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    let reusable = version == 1
        && !named_in(&tokens, "close")
        && framing != Framing::Close
        // TE and CL together: a message we will not trust a second time.
        && !(te_chunked.is_some() && length.is_some());

    out.clear();
    let mut length_seen = false;
    let reason = code.canonical_reason().unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    put_int(out, status);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (h, &k) in r.headers.iter().zip(&kinds) {
        if k.hop_by_hop() || named_in(&tokens, h.name) {
            continue;
        }
        match k {
            // Written below from the framing; without a body, the first
            // one as it came (what hyper relays too).
            Field::ContentLength if !no_body || std::mem::replace(&mut length_seen, true) => {}
            Field::Hsts if extra.hsts => {}
            _ => put_field(out, h),
        }
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            put_int(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::Close => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        Framing::None => {}
    }
    if extra.hsts {
        out.extend_from_slice(HSTS);
    }
    if extra.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    RespParse::Ready(Resp {
        head_len,
        status,
        framing,
        reusable,
    })
}

#[path = "h1_decode.rs"]
mod decode;
pub(crate) use decode::Decoder;
#[cfg(test)]
use decode::{BodyError, MAX_CHUNK_LINE};

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;

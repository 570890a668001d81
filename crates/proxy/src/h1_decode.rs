//! Bodies in any split, written out again ([`Decoder`]): a length stays a
//! length, chunked and close-delimited bodies go out chunked. Pure: bytes
//! in, bytes out, every rule unit-tested in `h1_tests.rs`.

use std::io::Write as _;

use super::Framing;

/// A chunk-size line or a trailer longer than this is a broken upstream.
pub(super) const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyError(pub &'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Hex digits of a chunk size (`digits`: whether any came).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: only more of it, an extension or CR.
    Ws(u64),
    /// An extension after the size, up to CR.
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

/// A response body read in any split, written out in the client's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    Length(u64),
    Chunked {
        state: Chunk,
        line: usize,
        trailers: usize,
    },
    Close,
    Done,
}

impl Decoder {
    pub(crate) fn new(f: Framing) -> Decoder {
        match f {
            Framing::None | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked {
                state: Chunk::Size { size: 0, digits: 0 },
                line: 0,
                trailers: 0,
            },
            Framing::Close => Decoder::Close,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Reads from `input`, appends to `out`; returns the bytes consumed,
    /// fewer than given only once the body is done (the rest is not ours).
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        match self {
            Decoder::Done => Ok(0),
            Decoder::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *left -= n as u64;
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(n)
            }
            Decoder::Close => {
                chunk_out(out, input);
                Ok(input.len())
            }
            Decoder::Chunked {
                state,
                line,
                trailers,
            } => {
                let mut i = 0;
                while i < input.len() {
                    let b = input[i];
                    match *state {
                        Chunk::Data(left) => {
                            let n = (left).min((input.len() - i) as u64) as usize;
                            chunk_out(out, &input[i..i + n]);
                            i += n;
                            *state = if left == n as u64 {
                                Chunk::DataCr
                            } else {
                                Chunk::Data(left - n as u64)
                            };
                            continue;
                        }
                        Chunk::Size { size, digits } => {
                            *line += 1;
                            if let Some(d) = (b as char).to_digit(16) {
                                // Leading zeros are fine; a size past u64
                                // is not.
                                if size >> 60 != 0 {
                                    return Err(BodyError("chunk size too large"));
                                }
                                *state = Chunk::Size {
                                    size: size * 16 + d as u64,
                                    digits: 1,
                                };
                            } else if digits == 0 {
                                return Err(BodyError("invalid chunk size"));
                            } else if b == b'\r' {
                                *state = Chunk::SizeLf(size);
                            } else if b == b';' {
                                *state = Chunk::Ext(size);
                            } else if b == b' ' || b == b'\t' {
                                *state = Chunk::Ws(size);
                            } else {
                                return Err(BodyError("invalid chunk size"));
                            }
                        }
                        Chunk::Ws(size) => {
                            *line += 1;
                            match b {
                                b' ' | b'\t' => {}
                                b';' => *state = Chunk::Ext(size),
                                b'\r' => *state = Chunk::SizeLf(size),
                                // `5 6`: not a size anyone else would read
                                // as 5.
                                _ => return Err(BodyError("invalid chunk size")),
                            }
                        }
                        Chunk::Ext(size) => {
                            *line += 1;
                            if b == b'\r' {
                                *state = Chunk::SizeLf(size);
                            } else if b == b'\n' {
                                return Err(BodyError("chunk line without CR"));
                            }
                        }
                        Chunk::SizeLf(size) => {
                            if b != b'\n' {
                                return Err(BodyError("chunk size without LF"));
                            }
                            *line = 0;
                            *state = if size == 0 {
                                Chunk::TrailerStart
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Chunk::DataCr => {
                            if b != b'\r' {
                                return Err(BodyError("chunk data without CRLF"));
                            }
                            *state = Chunk::DataLf;
                        }
                        Chunk::DataLf => {
                            if b != b'\n' {
                                return Err(BodyError("chunk data without CRLF"));
                            }
                            *line = 0;
                            *state = Chunk::Size { size: 0, digits: 0 };
                        }
                        Chunk::TrailerStart => {
                            *trailers += 1;
                            *state = if b == b'\r' {
                                Chunk::EndLf
                            } else {
                                Chunk::TrailerLine
                            };
                        }
                        Chunk::TrailerLine => {
                            *trailers += 1;
                            if b == b'\r' {
                                *state = Chunk::TrailerLf;
                            } else if b == b'\n' {
                                return Err(BodyError("trailer without CR"));
                            }
                        }
                        Chunk::TrailerLf => {
                            if b != b'\n' {
                                return Err(BodyError("trailer without LF"));
                            }
                            *state = Chunk::TrailerStart;
                        }
                        Chunk::EndLf => {
                            if b != b'\n' {
                                return Err(BodyError("chunked body without final CRLF"));
                            }
                            // Trailers are dropped: few clients read them
                            // and the peers' proxies do the same.
                            out.extend_from_slice(b"0\r\n\r\n");
                            *self = Decoder::Done;
                            return Ok(i + 1);
                        }
                    }
                    if *line > MAX_CHUNK_LINE {
                        return Err(BodyError("chunk line too long"));
                    }
                    if *trailers > MAX_TRAILERS && matches!(state, Chunk::TrailerLine) {
                        return Err(BodyError("trailers too long"));
                    }
                    i += 1;
                }
                Ok(i)
            }
        }
    }

    /// For a length-delimited body: how many of `avail` bytes at hand are
    /// body, to be sent on as they are, without a copy ([`Self::advance`]
    /// then counts them). `None` for other framings.
    pub(crate) fn passthrough(&self, avail: usize) -> Option<usize> {
        match *self {
            Decoder::Length(left) => Some(left.min(avail as u64) as usize),
            _ => None,
        }
    }

    /// Counts `n` bytes of a length-delimited body sent on as they were.
    pub(crate) fn advance(&mut self, n: usize) {
        if let Decoder::Length(left) = self {
            *left -= n as u64;
            if *left == 0 {
                *self = Decoder::Done;
            }
        }
    }

    /// The upstream closed: fine for a close-delimited body (its last
    /// chunk goes out), an error otherwise.
    pub(crate) fn eof(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self {
            Decoder::Done => Ok(()),
            Decoder::Close => {
                out.extend_from_slice(b"0\r\n\r\n");
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(BodyError("upstream closed before the end of the body")),
        }
    }
}

/// One chunk of `data` in chunked framing (nothing for no data: an empty
/// chunk would end the body).
fn chunk_out(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

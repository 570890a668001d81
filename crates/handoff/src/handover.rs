//! Handing the daemon over to a new process without refusing a connection
//! (`handoff reload`, `handoff upgrade`, SIGHUP).
//!
//! The old daemon listens on `STATE_DIR/handover.sock` and starts the new
//! one (`serve --takeover`). Over that socket, in order:
//! 1. new → old: `Hello` (its pid);
//! 2. old → new: `Listeners` with every listening socket attached
//!    (SCM_RIGHTS, as HAProxy's `expose-fd listeners` and Pingora's
//!    upgrade do): the kernel's accept queues carry over, so a client
//!    never meets a closed port;
//! 3. old → new: `Released` once the old one has stopped managing (its
//!    reconcilers closed, the state dir lock dropped); instances keep
//!    running;
//! 4. new → old: `Serving` once the new one has taken the lock, adopted
//!    the instances, seen their health and started accepting. The old one
//!    then stops accepting, finishes what is in flight and exits.
//!
//! If the new process dies or says nothing in time, the socket closes and
//! the old one takes its state back: nothing changed for the clients.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest message; a `Listeners` with every name fits easily.
const MAX_MESSAGE: usize = 64 * 1024;
/// The kernel passes at most this many descriptors in one message.
pub const MAX_FDS: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello {
        pid: u32,
    },
    /// One name per attached descriptor: a service's name, or `admin`;
    /// `more`: another batch follows (at most [`MAX_FDS`] per message).
    Listeners {
        names: Vec<String>,
        more: bool,
    },
    Released,
    /// The managed services it adopted: the old daemon stops the others'
    /// instances.
    Serving {
        pid: u32,
        services: Vec<String>,
    },
}

/// The admin listener's name among the [`Message::Listeners`].
pub const ADMIN: &str = "\u{0}admin";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

/// Sends `msg` (and `fds`, at most [`MAX_FDS`]) as one datagram-like
/// record: a 4-byte length, then the JSON; the descriptors ride with the
/// first byte.
pub fn send(stream: &UnixStream, msg: &Message, fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} listening sockets to hand over; at most {MAX_FDS} fit",
            fds.len()
        )));
    }
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let iov = [IoSlice::new(&frame)];
    // SAFETY: msghdr points at live buffers for the duration of sendmsg;
    // the control buffer is CMSG_SPACE bytes for `fds.len()` descriptors.
    let sent = unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            hdr.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(c),
                std::mem::size_of_val(fds),
            );
        }
        libc::sendmsg(stream.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The descriptors went with the first bytes; the rest is plain data.
    let mut rest = &frame[sent as usize..];
    let mut s = stream;
    while !rest.is_empty() {
        let n = s.write(rest)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Receives one record sent by [`send`], with its descriptors.
pub fn recv(stream: &UnixStream) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut len = [0u8; 4];
    let mut control = vec![0u8; unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize];
    let mut fds = Vec::new();
    // SAFETY: as in `send`; descriptors received are owned from here on.
    let got = unsafe {
        let mut iov = libc::iovec {
            iov_base: len.as_mut_ptr() as *mut libc::c_void,
            iov_len: 4,
        };
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = control.len() as _;
        let n = libc::recvmsg(stream.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC);
        if n >= 0 {
            let mut c = libc::CMSG_FIRSTHDR(&hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c);
                    let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / 4 {
                        let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&hdr, c);
            }
        }
        n
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    if got == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other daemon closed the hand-over socket",
        ));
    }
    let mut s = stream;
    if (got as usize) < 4 {
        s.read_exact(&mut len[got as usize..])?;
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_MESSAGE {
        return Err(io::Error::other(format!("hand-over message of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok((msg, fds))
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is
/// the service's main one now and is ready; nothing without
/// `NOTIFY_SOCKET`.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("MAINPID={}\nREADY=1\n", std::process::id());
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let path = path.to_string_lossy().to_string();
    let r = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Listening sockets systemd passed (`LISTEN_FDS`, for this pid), by local
/// address; their names from `LISTEN_FDNAMES` are not needed, the address
/// says which service each one is.
pub fn systemd_listeners() -> Vec<std::net::TcpListener> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !for_us || n == 0 {
        return Vec::new();
    }
    // Not for the children we start. (Called before any other thread
    // exists: setting the environment is not thread-safe.)
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    (0..n)
        .map(|i| {
            let fd = 3 + i as RawFd;
            // SAFETY: systemd hands these descriptors to this process.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                std::net::TcpListener::from_raw_fd(fd)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn listeners_and_messages_cross_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let msg = Message::Listeners {
            names: vec!["web".into(), ADMIN.into()],
            more: false,
        };
        send(&a, &msg, &[l1.as_raw_fd(), l2.as_raw_fd()]).unwrap();
        send(&a, &Message::Released, &[]).unwrap();
        let (got, fds) = recv(&b).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2);
        // The same sockets: a connection to l1's port is accepted on the
        // received descriptor.
        let r1 = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(r1.local_addr().unwrap(), l1.local_addr().unwrap());
        let _c = std::net::TcpStream::connect(l1.local_addr().unwrap()).unwrap();
        drop(l1);
        assert!(r1.accept().is_ok());
        let (m, fds) = recv(&b).unwrap();
        assert!(m == Message::Released && fds.is_empty());
        drop(a);
        assert!(recv(&b).is_err(), "EOF after the sender is gone");
    }
}

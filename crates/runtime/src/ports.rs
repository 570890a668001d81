//! Port allocation for instances: from a configured range or ephemeral,
//! always checked free by binding before use.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use crate::RuntimeError;

/// Whether nothing listens on `port` (on 127.0.0.1 or 0.0.0.0).
pub fn is_free(port: u16) -> bool {
    [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED]
        .iter()
        .all(|ip| TcpListener::bind(SocketAddrV4::new(*ip, port)).is_ok())
}

/// A free port not in `taken`: the lowest free one of `range`, or an
/// ephemeral one from the kernel when there is no range.
pub fn allocate(range: Option<(u16, u16)>, taken: &[u16]) -> Result<u16, RuntimeError> {
    match range {
        Some((from, to)) => (from..=to)
            .find(|p| !taken.contains(p) && is_free(*p))
            .ok_or(RuntimeError::NoFreePort { from, to }),
        None => {
            for _ in 0..64 {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| {
                    RuntimeError::Io {
                        what: "cannot find a free port on",
                        path: "127.0.0.1".into(),
                        source,
                    }
                })?;
                let p = l.local_addr().map(|a| a.port()).unwrap_or(0);
                drop(l);
                if p != 0 && !taken.contains(&p) && is_free(p) {
                    return Ok(p);
                }
            }
            Err(RuntimeError::NoFreePort {
                from: 1024,
                to: 65535,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_skips_taken_and_busy_ports() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = busy.local_addr().unwrap().port();
        // A one-port range whose port is busy has no free port.
        assert!(matches!(
            allocate(Some((b, b)), &[]),
            Err(RuntimeError::NoFreePort { .. })
        ));
        let p = allocate(None, &[]).unwrap();
        assert!(is_free(p));
        assert!(matches!(
            allocate(Some((p, p)), &[p]),
            Err(RuntimeError::NoFreePort { .. })
        ));
    }
}

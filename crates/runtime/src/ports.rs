//! Port allocation for instances: from a configured range or from the
//! default range below the kernel's ephemeral ports, always checked free by
//! binding before use.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use crate::RuntimeError;

/// Whether nothing listens on `port` (on 127.0.0.1 or 0.0.0.0).
pub fn is_free(port: u16) -> bool {
    [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED]
        .iter()
        .all(|ip| TcpListener::bind(SocketAddrV4::new(*ip, port)).is_ok())
}

/// The kernel's range for the source ports of outgoing connections.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The default range of instance ports: the 10,000 ports just *below* the
/// kernel's ephemeral range. Not the ephemeral range itself: every outgoing
/// connection on the machine (the proxy's, health checks', clients') takes a
/// source port from it, and one can grab a port in the instant a restarting
/// instance has freed it — the instance then cannot listen on its own port.
pub fn default_range() -> (u16, u16) {
    let (lo, _) = ephemeral_range();
    let to = lo.saturating_sub(1).max(2048);
    (to.saturating_sub(10_000).max(1024), to)
}

/// A free port not in `taken`: the lowest free one of `range`; without a
/// range, a free one of [`default_range`], starting at a random place so
/// that daemons on one machine rarely reach for the same port.
pub fn allocate(range: Option<(u16, u16)>, taken: &[u16]) -> Result<u16, RuntimeError> {
    let ((from, to), start) = match range {
        Some(r) => (r, 0),
        None => (default_range(), fastrand_u32()),
    };
    let n = (to - from) as u32 + 1;
    (0..n)
        .map(|i| from + (start.wrapping_add(i) % n) as u16)
        .find(|p| !taken.contains(p) && is_free(*p))
        .ok_or(RuntimeError::NoFreePort { from, to })
}

fn fastrand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().wrapping_mul(2_654_435_761)
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
        let (lo, hi) = default_range();
        assert!(
            (lo..=hi).contains(&p) && hi < ephemeral_range().0,
            "{p} not below the ephemeral range"
        );
        assert!(matches!(
            allocate(Some((p, p)), &[p]),
            Err(RuntimeError::NoFreePort { .. })
        ));
    }
}

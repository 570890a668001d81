//! One exchange with the runtime API: connect, send one line, read the answer
//! until HAProxy closes the connection.
//!
//! Without `prompt`, HAProxy reads one line, runs the commands on it (several
//! may be joined with `;`), writes their answers and closes. The write side
//! is left open until then: from 3.0 a `wait` command stops waiting when the
//! client half-closes.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::{Error, Socket};

/// Sends `line` (without its newline) and returns everything HAProxy wrote
/// back, within `timeout` for the whole exchange.
pub async fn exchange(socket: &Socket, line: &str, timeout: Duration) -> Result<String, Error> {
    if line.contains('\n') || line.contains('\r') {
        return Err(Error::InvalidArgument {
            what: "command",
            value: line.to_string(),
            why: "one line: a newline would start another command",
        });
    }
    let work = async {
        match socket {
            Socket::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| connect_error(socket, e))?;
                talk(stream, line, socket).await
            }
            Socket::Tcp(addr) => {
                let stream = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| connect_error(socket, e))?;
                talk(stream, line, socket).await
            }
        }
    };
    let answer = match tokio::time::timeout(timeout, work).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(Error::Timeout {
                addr: socket.to_string(),
                command: line.to_string(),
                after: timeout,
            })
        }
    };
    tracing::debug!(socket = %socket, command = line, answer = %answer.trim_end(), "haproxy");
    Ok(answer)
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    line: &str,
    socket: &Socket,
) -> Result<String, Error> {
    let io_error = |source| Error::Io {
        addr: socket.to_string(),
        source,
    };
    let mut request = Vec::with_capacity(line.len() + 1);
    request.extend_from_slice(line.as_bytes());
    request.push(b'\n');
    stream.write_all(&request).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.map_err(io_error)?;
    String::from_utf8(answer).map_err(|e| Error::BadAnswer {
        command: line.to_string(),
        why: "not UTF-8",
        answer: String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

fn connect_error(socket: &Socket, source: io::Error) -> Error {
    let addr = socket.to_string();
    match (socket, source.kind()) {
        (Socket::Unix(_), io::ErrorKind::NotFound) => Error::SocketMissing { path: addr },
        (Socket::Unix(_), io::ErrorKind::PermissionDenied) => {
            Error::PermissionDenied { path: addr }
        }
        (_, io::ErrorKind::ConnectionRefused) => Error::NotListening {
            addr,
            config_line: socket.admin_config_line(),
        },
        _ => Error::Io { addr, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn missing_socket_and_refused_connections_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Socket::Unix(dir.path().join("admin.sock"));
        assert!(matches!(
            exchange(&missing, "show info", T).await,
            Err(Error::SocketMissing { .. })
        ));

        // A socket file nobody listens on (HAProxy died and left it).
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(matches!(
            exchange(&Socket::Unix(stale), "show info", T).await,
            Err(Error::NotListening { .. })
        ));

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            exchange(&Socket::Tcp(format!("127.0.0.1:{port}")), "show info", T).await,
            Err(Error::NotListening { .. })
        ));
    }

    #[tokio::test]
    async fn file_permissions_are_typed() {
        // Root ignores file modes, so only a non-root run can see this.
        if running_as_root() {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("admin.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert!(matches!(
            exchange(&Socket::Unix(path), "show info", T).await,
            Err(Error::PermissionDenied { .. })
        ));
    }

    fn running_as_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2))
                    == Some("0")
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn one_line_per_exchange_and_a_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let socket = Socket::Unix(path);
        assert!(matches!(
            exchange(&socket, "show info\nshow stat", T).await,
            Err(Error::InvalidArgument { .. })
        ));
        // A fake HAProxy that reads the line, answers and closes.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"show cli level\n");
            s.write_all(b"admin\n\n").await.unwrap();
            drop(s);
            // The next one never answers.
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        assert_eq!(
            exchange(&socket, "show cli level", T).await.unwrap(),
            "admin\n\n"
        );
        assert!(matches!(
            exchange(&socket, "show info", Duration::from_millis(200)).await,
            Err(Error::Timeout { .. })
        ));
        server.abort();
    }
}

//! systemd's readiness protocol (`sd_notify(3)`), for `Type=notify` units:
//! `stampgate run` says `READY=1` once its listeners are bound, so that
//! `systemctl start` (and units ordered after it) wait for a proxy that
//! can take traffic; `RELOADING=1` … `READY=1` around a SIGHUP reload; and
//! `STOPPING=1` when a graceful shutdown begins. A datagram to the unix
//! socket named by `NOTIFY_SOCKET`; without that variable (not under
//! systemd) every call does nothing. Written here rather than taken from a
//! crate: it is one `sendto`.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Listeners are bound: the service is up. `status` is shown by
/// `systemctl status`.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// A configuration reload has begun; [`ready`] ends it.
pub fn reloading() {
    send("RELOADING=1\nSTATUS=reloading the configuration");
}

/// A graceful shutdown has begun.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=finishing in-flight requests");
}

/// Sends to `NOTIFY_SOCKET` if set. A failure is logged, never fatal: the
/// proxy serves whether or not its supervisor heard it (and systemd's own
/// start timeout reports a readiness message that never arrived).
fn send(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return;
    };
    let Some(socket) = socket.to_str() else {
        tracing::warn!("NOTIFY_SOCKET is not UTF-8; not notifying systemd");
        return;
    };
    if let Err(e) = send_to(socket, state) {
        tracing::warn!(socket, error = %e, "cannot notify systemd");
    }
}

/// One datagram to `socket`: a path, or `@name` for an abstract socket
/// (what systemd uses inside some containers).
pub fn send_to(socket: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_arrives_as_one_datagram_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn abstract_sockets_are_reached_by_at_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("stampgate-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send_to(dir.path().join("absent").to_str().unwrap(), "READY=1").is_err());
    }
}

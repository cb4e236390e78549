//! Loopback networking for the kit: handing out free ports, probing whether a server listens, and the tiny HTTP/1.0
//! client used against nats-server's monitoring endpoints
//! (<https://docs.nats.io/running-a-nats-service/nats_admin/monitoring>).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The loopback address every server of the kit listens on.
pub const HOST: &str = "127.0.0.1";

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out before.
///
/// The kernel picks the port (bind to port 0); remembering earlier answers keeps two servers of the same test
/// process from being given the same port between the probe and the server's own bind.
///
/// # Panics
/// When no port can be bound at all (the loopback interface is unusable), which no test could survive anyway.
pub fn free_port() -> u16 {
    let mut ports = handed_out().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port());
        match port {
            Ok(port) if ports.insert(port) => return port,
            Ok(_) => continue,
            Err(err) => panic!("cannot bind a TCP port on 127.0.0.1: {err}"),
        }
    }
    panic!("no free TCP port on 127.0.0.1 after 1000 attempts");
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub(crate) fn port_is_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A minimal HTTP response: status code and body.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET path` from `127.0.0.1:port` with HTTP/1.0 (the server closes the connection after the response).
pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<HttpResponse> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP status line"))?;
    Ok(HttpResponse { status, body: body.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_not_repeated() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }
}

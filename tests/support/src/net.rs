//! Loopback plumbing shared by every process handle: one way to pick a
//! port, to wait for a listener, and to read the gateway's HTTP endpoint.

use anyhow::{bail, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1 (the kernel picks it
/// from a bound listener, which is then closed).
///
/// # Errors
/// No loopback port can be bound.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on `port` (a broker that
/// cannot say when it is ready is ready when it listens).
///
/// # Errors
/// Nothing listens within `limit`.
pub fn wait_for_port(port: u16, what: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not open port {port} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until nothing accepts connections on `port` any more (before a
/// restart binds it again). Gives up quietly after `limit`: the restart
/// then says why it cannot bind.
pub fn wait_for_close(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status and body of a GET on a loopback port, `(0, "")` when nothing
/// answers (a gateway not up yet, or gone).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let r = String::from_utf8_lossy(&raw).into_owned();
    let code = r.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Every sample of a Prometheus text exposition, keyed by `name{labels}`.
pub fn samples(exposition: &str) -> HashMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| v.parse().ok().map(|v| (k.to_owned(), v))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::samples;

    #[test]
    fn samples_are_keyed_by_name_and_labels() {
        let m = samples("# HELP a x\n# TYPE a counter\na 3\nb{reason=\"bad jpeg\"} 2\n\n# EOF\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["a"], 3.0);
        assert_eq!(m["b{reason=\"bad jpeg\"}"], 2.0);
    }
}

//! Debian's `stunnel4` terminating TLS in front of a plain listener (tansu
//! 0.6.0's own TLS does not work), optionally requiring a client
//! certificate signed by the test CA (mTLS). Killed on drop.

use crate::net::{free_port, wait_for_port};
use crate::tls::Certs;
use anyhow::Result;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Not asked for (TLS).
    NotAsked,
    /// Required, and checked against the CA (mTLS).
    Required,
}

/// A stunnel process.
pub struct Stunnel {
    /// Its TLS listener on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    /// TLS on `port` (0: a free one) to `127.0.0.1:connect`, with the
    /// server certificate of `certs`.
    ///
    /// # Errors
    /// stunnel missing, or not listening within 20 s.
    pub fn start(port: u16, connect: u16, certs: &Certs, clients: ClientCerts) -> Result<Self> {
        let port = if port == 0 { free_port()? } else { port };
        let dir = tempfile::tempdir()?;
        let verify = match clients {
            ClientCerts::NotAsked => String::new(),
            ClientCerts::Required => format!("verifyChain = yes\nrequireCert = yes\nCAfile = {}\n", certs.ca.display()),
        };
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 5\n[tls]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{connect}\n\
                 cert = {}\nkey = {}\n{verify}",
                certs.server_cert.display(),
                certs.server_key.display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("stunnel.log"))?;
        let child = Command::new(crate::process::program(&["stunnel4", "stunnel"], "stunnel4")?)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let s = Self { port, child: Some(child), _dir: dir };
        wait_for_port(port, "stunnel", Duration::from_secs(20))?;
        Ok(s)
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

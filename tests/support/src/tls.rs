//! Certificates for the TLS tests, made with Debian's `openssl`: a CA,
//! a server certificate for 127.0.0.1 signed by it, a client certificate
//! signed by it (mTLS), a second CA nobody signed with (an untrusted
//! one), and the server's key in a certificate that expired in 2020
//! (`openssl ca` with explicit dates). Valid for two days.

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files, in one folder.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server's certificate (`IP:127.0.0.1`, `DNS:localhost`).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (`CN=gateway`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Another CA, which signed nothing here.
    pub other_ca: PathBuf,
    /// The server's key in a certificate by the CA that expired on
    /// 2020-01-02.
    pub expired_server_cert: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output().context("openssl (Debian: openssl)")?;
    ensure!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

impl Certs {
    /// Makes every file in `dir`.
    ///
    /// # Errors
    /// `openssl` missing or failing.
    pub fn make(dir: &Path) -> Result<Self> {
        let days = ["-days", "2"];
        for (name, cn) in [("ca", "vision-gateway test CA"), ("other-ca", "an untrusted CA")] {
            let subj = format!("/CN={cn}");
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            openssl(
                dir,
                &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-subj", &subj],
            )?;
        }
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, cn) in [("server", "127.0.0.1"), ("client", "gateway")] {
            let subj = format!("/CN={cn}");
            let (key, csr, pem, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj])?;
            let mut sign = vec!["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
            sign.extend(["-out", &pem, "-extfile", &ext]);
            sign.extend(days);
            openssl(dir, &sign)?;
        }
        // `x509 -req` takes no dates in OpenSSL 3.0; `ca` does.
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = here\n[here]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n",
        )?;
        std::fs::write(dir.join("index.txt"), "")?;
        std::fs::write(dir.join("serial"), "1000\n")?;
        let mut ca = vec!["ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-notext"];
        ca.extend(["-in", "server.csr", "-out", "expired.pem", "-extfile", "server.ext"]);
        ca.extend(["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]);
        openssl(dir, &ca)?;
        Ok(Self {
            expired_server_cert: dir.join("expired.pem"),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
        })
    }
}

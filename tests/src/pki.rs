//! A throw-away PKI for TLS tests, made with the `openssl` command: a CA, a server certificate
//! for 127.0.0.1/localhost and a client certificate (device authentication, as AWS IoT Core
//! does it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The files of the test PKI (PEM).
pub struct TestPki {
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN = the device id).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates the CA and both certificates (P-256 keys, valid two days).
    pub fn generate(client_cn: &str) -> anyhow::Result<TestPki> {
        let dir = tempfile::tempdir()?;
        let at = |name: &str| dir.path().join(name);
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=eddy test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", client_cn, "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(
                at(&format!("{name}.ext")),
                format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
            )?;
            openssl(
                dir.path(),
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            )?;
            openssl(
                dir.path(),
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{name}.crt"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            )?;
        }
        // mosquitto started as root drops to its own user before it reads the key files.
        make_readable(dir.path())?;
        Ok(TestPki {
            ca_cert: at("ca.crt"),
            server_cert: at("server.crt"),
            server_key: at("server.key"),
            client_cert: at("client.crt"),
            client_key: at("client.key"),
            _dir: dir,
        })
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (install it: apt-get install openssl, or run ./scripts/test-all.sh)")?;
    if !output.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Makes `dir` and the files in it readable by every user (test keys only).
pub fn make_readable(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    Ok(())
}

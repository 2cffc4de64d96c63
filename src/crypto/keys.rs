//! The server's ed25519 signing key: generated on first start, kept in the data folder,
//! and used for everything this server signs (events, key responses, federation requests).

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rand::Rng;
use ruma::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;

pub struct ServerKey {
    pair: Ed25519KeyPair,
    /// `ed25519:VERSION`.
    pub key_id: String,
    /// Unpadded base64 of the public key, as the spec publishes it.
    pub public_key_b64: String,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// File format, one line: `ed25519 VERSION BASE64_PKCS8_DER`.
const KEY_FILE: &str = "signing.key";

impl ServerKey {
    /// Loads the key from `data_dir/signing.key`, generating and saving it if absent.
    pub fn load_or_generate(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create data folder {}", data_dir.display()))?;
            let der = Ed25519KeyPair::generate();
            let version: String = {
                let mut rng = rand::thread_rng();
                (0..6).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect()
            };
            let line = format!("ed25519 a_{version} {}\n", STANDARD.encode(&der[..]));
            write_private(&path, &line).with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new server signing key");
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [alg, version, der] = parts[..] else {
            bail!("{}: expected `ed25519 VERSION KEY`", path.display());
        };
        if alg != "ed25519" {
            bail!("{}: unsupported key algorithm {alg}", path.display());
        }
        let der = STANDARD.decode(der).with_context(|| format!("{}: key is not base64", path.display()))?;
        let pair = Ed25519KeyPair::from_der(&der, version.to_owned())
            .map_err(|e| anyhow::anyhow!("{}: invalid key: {e}", path.display()))?;
        Ok(ServerKey {
            key_id: format!("ed25519:{version}"),
            public_key_b64: STANDARD_NO_PAD.encode(pair.public_key()),
            pair,
        })
    }

    /// Adds this server's signature to a JSON object.
    pub fn sign_json(&self, server_name: &str, object: &mut CanonicalJsonObject) -> anyhow::Result<()> {
        ruma::signatures::sign_json(server_name, &self.pair, object).context("cannot sign JSON")
    }

    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }
}

/// Writes the key to a file of its own, then links it into place: processes starting at
/// once on a shared data folder never read a half-written key, and all keep the first one.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let draft = path.with_extension(format!("new.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&draft).and_then(|mut f| {
        f.write_all(contents.as_bytes())?;
        f.sync_all()
    });
    let linked = written.and_then(|()| match std::fs::hard_link(&draft, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&draft);
    linked
}

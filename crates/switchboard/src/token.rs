//! Secrets kept in files: the management token (read by the server and the CLI) and the SIP
//! secret (the MAC key of branches, flow tokens and Record-Route signatures, kept so that the
//! Record-Routes of calls survive a restart; nodes of a cluster share the file). Each is 32
//! random bytes as hex, created at first start in a file only its owner can read.

use std::io::Write as _;
use std::path::Path;

/// Random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read as _;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the token at `path`: `Ok(None)` when there is no file.
pub fn read(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim();
            if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{}: it must hold at least 16 printable characters",
                    path.display()
                ));
            }
            Ok(Some(t.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the token {}: {e}", path.display())),
    }
}

/// The token at `path`, created (mode 0600) when there is none yet.
pub fn load_or_create(path: &Path) -> Result<String, String> {
    load_or_create_as(path, "management token", "[management] token_file")
}

/// The SIP secret at `path` as MAC keys, created when there is none yet.
pub fn sip_keys(path: &Path) -> Result<sip_proxy::mac::Keys, String> {
    let t = load_or_create_as(path, "SIP secret", "[sip] secret_file")?;
    // the key is derived (HMAC-SHA-256), so any text of enough entropy serves as the secret
    let d = sip_wire::auth::hmac_sha256(t.as_bytes(), b"switchboard sip mac keys");
    let mut key = [0u8; 16];
    key.copy_from_slice(&d[..16]);
    Ok(sip_proxy::mac::Keys::new(&key))
}

fn load_or_create_as(path: &Path, what: &str, key: &str) -> Result<String, String> {
    if let Some(t) = read(path)? {
        return Ok(t);
    }
    let t = hex(&random_bytes::<32>().map_err(|e| format!("no random bytes: {e}"))?);
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }
    .map_err(|e| {
        format!(
            "cannot create the {what} {}: {e} (set {key} to a writable place)",
            path.display()
        )
    })?;
    f.write_all(format!("{t}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(file = %path.display(), "{what} created");
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("sb-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("switchboard.token");
        assert_eq!(read(&p).unwrap(), None);
        let t = load_or_create(&p).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create(&p).unwrap(), t, "kept across starts");
        assert_eq!(read(&p).unwrap(), Some(t));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, "short\n").unwrap();
        assert!(read(&p).unwrap_err().contains("at least 16"));
        // the SIP secret: the same keys from the same file, other keys from another
        let (a, b) = (dir.join("a.secret"), dir.join("b.secret"));
        let ka = sip_keys(&a).unwrap();
        assert_eq!(sip_keys(&a).unwrap(), ka);
        assert_ne!(sip_keys(&b).unwrap(), ka);
        let e = load_or_create(&dir.join("missing-dir/switchboard.token")).unwrap_err();
        assert!(e.contains("token_file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

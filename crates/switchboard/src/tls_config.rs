//! `[tls]`: the certificate of `tls:` and `wss:` listeners and of outgoing TLS, read and
//! checked at load time so that `switchboard check` names a bad file.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::{err, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain (PEM).
    pub certificate: String,
    /// Its private key (PEM).
    pub private_key: String,
    /// Ask clients for a certificate signed by one of these CAs (PEM file).
    pub client_ca: Option<String>,
    /// CAs of the servers the proxy connects to over TLS (default: the system's bundle).
    pub server_ca: Option<String>,
    /// Check the certificate of servers the proxy connects to.
    #[serde(default = "d_true")]
    pub verify_server: bool,
}

fn d_true() -> bool {
    true
}

/// Reads the files; every problem is a configuration error naming the key.
pub fn validate(raw: &RawTls, errors: &mut Vec<ConfigError>) -> Option<Arc<net::tls::Tls>> {
    let settings = net::tls::TlsSettings {
        certificate: raw.certificate.clone().into(),
        private_key: raw.private_key.clone().into(),
        client_ca: raw.client_ca.clone().map(Into::into),
        server_ca: raw.server_ca.clone().map(Into::into),
        verify_server: raw.verify_server,
    };
    match net::tls::Tls::load(settings) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            let msg = e.to_string();
            let key = if msg.starts_with(&raw.private_key) {
                "tls.private_key"
            } else if raw
                .client_ca
                .as_ref()
                .is_some_and(|c| msg.starts_with(c.as_str()))
            {
                "tls.client_ca"
            } else if raw
                .server_ca
                .as_ref()
                .is_some_and(|c| msg.starts_with(c.as_str()))
            {
                "tls.server_ca"
            } else {
                "tls.certificate"
            };
            errors.push(err(key, "-", msg));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    fn fixture(n: &str) -> String {
        format!("{}/../net/tests/fixtures/{n}", env!("CARGO_MANIFEST_DIR"))
    }

    fn load(extra: &str) -> Result<crate::config::Config, Vec<crate::config::ConfigError>> {
        crate::config::load(
            &format!(
                "[sip]\nlisten = [\"udp:127.0.0.1:5060\", \"tls:127.0.0.1:5061\", \"wss:127.0.0.1:8443\", \"ws:127.0.0.1:8080\"]\n{extra}\n[routing]\ndefault_set = 1\n[dispatcher]\n[[dispatcher.set]]\nid = 1\ndestinations = [\"sip:127.0.0.1:5080\"]\n"
            ),
            1,
        )
    }

    #[test]
    fn tls_and_wss_listeners_need_the_section() {
        let e = load("").unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["sip.listen[1]", "sip.listen[2]"], "{e:?}");
        assert!(e[0].why.contains("[tls]"), "{}", e[0].why);
    }

    #[test]
    fn a_good_certificate_loads_and_bad_files_are_named() {
        let ok = format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            fixture("server.crt"),
            fixture("server.key")
        );
        let c = load(&ok).unwrap();
        assert_eq!(c.streams.len(), 3);
        assert!(c.tls.is_some());
        let bad_key = format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            fixture("server.crt"),
            fixture("ca.crt")
        );
        let e = load(&bad_key).unwrap_err();
        assert_eq!(e[0].key, "tls.private_key", "{e:?}");
        let missing =
            "[tls]\ncertificate = \"/nonexistent.crt\"\nprivate_key = \"/nonexistent.key\"\n";
        let e = load(missing).unwrap_err();
        assert_eq!(e[0].key, "tls.certificate", "{e:?}");
        assert!(e[0].why.contains("/nonexistent.crt"));
    }

    #[test]
    fn origins_must_be_origins() {
        let e = crate::config::load(
            "[sip]\nlisten = [\"ws:127.0.0.1:8080\"]\nws_origins = [\"https://ok.example\", \"not an origin\"]\n[routing]\ndefault_set = 1\n[[dispatcher.set]]\nid = 1\ndestinations = [\"sip:127.0.0.1:5080\"]\n",
            1,
        )
        .unwrap_err();
        assert_eq!(e[0].key, "sip.ws_origins[1]", "{e:?}");
    }
}

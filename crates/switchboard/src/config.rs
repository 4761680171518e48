//! The TOML configuration: read into raw serde structs (unknown keys refused), then
//! validated into typed settings. Every refusal names the key, the value and why.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sip_proxy::{Destination, Listener, ProxyConfig, Transport};
use sip_txn::TimerConfig;

/// The configuration compiled into the binary: `switchboard.example.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../switchboard.example.toml");

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub sip: RawSip,
    #[serde(default)]
    pub transactions: RawTransactions,
    #[serde(default)]
    pub dispatcher: crate::dispatch_config::RawDispatcher,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub management: RawManagement,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub database: RawDatabase,
    pub registrar: Option<crate::registrar_config::RawRegistrar>,
    #[serde(default)]
    pub dialog: RawDialog,
    pub balancer: Option<crate::balancer_config::RawBalancer>,
    #[serde(default)]
    pub accounting: RawAccounting,
    #[serde(default)]
    pub security: crate::security_config::RawSecurity,
    #[serde(default)]
    pub dns: crate::dns_config::RawDns,
    pub numbers: Option<crate::numbers_config::RawNumbers>,
    pub tls: Option<crate::tls_config::RawTls>,
    pub rtpengine: Option<crate::media_config::RawRtpengine>,
    pub media: Option<crate::media_config::RawMedia>,
    pub cluster: Option<crate::cluster_config::RawCluster>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccounting {
    /// A CDR per call in the `acc` and `missed_calls` tables.
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDialog {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "d_lifetime")]
    pub lifetime_s: u64,
    #[serde(default = "d_true")]
    pub honour_session_expires: bool,
    /// Dialogs written to the `dialog` table (write-behind) and restored at start.
    #[serde(default = "d_true")]
    pub persist: bool,
}

fn d_lifetime() -> u64 {
    6 * 3600
}
fn d_true() -> bool {
    true
}

impl Default for RawDialog {
    fn default() -> Self {
        RawDialog {
            enabled: false,
            lifetime_s: d_lifetime(),
            honour_session_expires: true,
            persist: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    #[serde(default = "d_db_url")]
    pub url: String,
    /// Changes each write-behind queue (location, dialog, acc) may hold unwritten.
    #[serde(default = "d_queue_limit")]
    pub write_queue_limit: usize,
    /// At SIGTERM, how long the writers may take to write what they hold.
    #[serde(default = "d_flush_timeout")]
    pub flush_timeout_s: u64,
    /// Connections to PostgreSQL or MySQL (SQLite uses 2 whatever this says).
    #[serde(default = "d_pool_size")]
    pub pool_size: u32,
    /// How long connecting, or waiting for a free connection, may take.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_s: u64,
}

fn d_pool_size() -> u32 {
    4
}
fn d_connect_timeout() -> u64 {
    5
}

fn d_queue_limit() -> usize {
    200_000
}
fn d_flush_timeout() -> u64 {
    10
}

fn d_db_url() -> String {
    "sqlite://switchboard.db".into()
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            url: d_db_url(),
            write_queue_limit: d_queue_limit(),
            flush_timeout_s: d_flush_timeout(),
            pool_size: d_pool_size(),
            connect_timeout_s: d_connect_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSip {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub udp_workers: usize,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_s: u64,
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
    /// The SIP secret's file (default: switchboard.secret beside the database).
    pub secret_file: Option<String>,
    #[serde(default = "d_max_headers")]
    pub max_headers: usize,
    #[serde(default = "d_max_vias")]
    pub max_vias: usize,
    #[serde(default = "d_max_txn")]
    pub max_transactions_per_source: usize,
    #[serde(default = "d_tcp_max")]
    pub tcp_max_connections: usize,
    #[serde(default = "d_tcp_per_ip")]
    pub tcp_max_connections_per_ip: usize,
    #[serde(default = "d_tcp_msg")]
    pub tcp_message_timeout_s: u64,
    #[serde(default = "d_tcp_queue")]
    pub tcp_send_queue_kb: usize,
    #[serde(default = "d_tcp_write")]
    pub tcp_write_timeout_s: u64,
    #[serde(default = "d_backlog")]
    pub tcp_listen_backlog: u32,
    /// `Origin` values a WebSocket handshake may carry (empty: any).
    #[serde(default)]
    pub ws_origins: Vec<String>,
}

fn d_max_headers() -> usize {
    256
}
fn d_max_vias() -> usize {
    32
}
fn d_max_txn() -> usize {
    5000
}
fn d_tcp_max() -> usize {
    20_000
}
fn d_tcp_per_ip() -> usize {
    1000
}
fn d_tcp_msg() -> u64 {
    10
}
fn d_tcp_queue() -> usize {
    256
}
fn d_tcp_write() -> u64 {
    10
}
fn d_backlog() -> u32 {
    4096
}

fn default_listen() -> Vec<String> {
    vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()]
}
fn default_tcp_idle() -> u64 {
    600
}
fn default_max_message() -> usize {
    65535
}

impl Default for RawSip {
    fn default() -> Self {
        RawSip {
            listen: default_listen(),
            aliases: vec![],
            udp_workers: 0,
            tcp_idle_timeout_s: default_tcp_idle(),
            max_message_size: default_max_message(),
            secret_file: None,
            max_headers: d_max_headers(),
            max_vias: d_max_vias(),
            max_transactions_per_source: d_max_txn(),
            tcp_max_connections: d_tcp_max(),
            tcp_max_connections_per_ip: d_tcp_per_ip(),
            tcp_message_timeout_s: d_tcp_msg(),
            tcp_send_queue_kb: d_tcp_queue(),
            tcp_write_timeout_s: d_tcp_write(),
            tcp_listen_backlog: d_backlog(),
            ws_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransactions {
    #[serde(default = "d_t1")]
    pub t1_ms: u64,
    #[serde(default = "d_t2")]
    pub t2_ms: u64,
    #[serde(default = "d_t4")]
    pub t4_ms: u64,
    #[serde(default = "d_branch")]
    pub branch_timeout_ms: u64,
    #[serde(default = "d_failover")]
    pub failover_codes: Vec<i64>,
}

fn d_t1() -> u64 {
    500
}
fn d_t2() -> u64 {
    4000
}
fn d_t4() -> u64 {
    5000
}
fn d_branch() -> u64 {
    2000
}
fn d_failover() -> Vec<i64> {
    vec![408, 500, 502, 503, 504]
}

impl Default for RawTransactions {
    fn default() -> Self {
        RawTransactions {
            t1_ms: d_t1(),
            t2_ms: d_t2(),
            t4_ms: d_t4(),
            branch_timeout_ms: d_branch(),
            failover_codes: d_failover(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub default_set: Option<i64>,
    /// How a request is recognised as a media server's: "auto" (its IP, any port; on a
    /// loopback address its IP and port), "address" or "address-port".
    #[serde(default = "d_match")]
    pub match_media_servers: String,
}

fn d_match() -> String {
    "auto".into()
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            default_set: None,
            match_media_servers: d_match(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManagement {
    #[serde(default = "d_mgmt")]
    pub listen: String,
    /// Every request needs the bearer token (false: loopback only, no token).
    #[serde(default = "d_true")]
    pub auth: bool,
    /// Where the token is kept (default: switchboard.token beside the database).
    pub token_file: Option<String>,
}

fn d_mgmt() -> String {
    "127.0.0.1:8888".into()
}

impl Default for RawManagement {
    fn default() -> Self {
        RawManagement {
            listen: d_mgmt(),
            auth: true,
            token_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "d_level")]
    pub level: String,
}

fn d_level() -> String {
    "info".into()
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { level: d_level() }
    }
}

/// A refused setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub why: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: value {} refused: {}",
            self.key, self.value, self.why
        )
    }
}

pub(crate) fn err(
    key: impl Into<String>,
    value: impl std::fmt::Display,
    why: impl Into<String>,
) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub udp: Vec<SocketAddr>,
    /// Stream listeners (TCP, TLS, WS, WSS).
    pub streams: Vec<(Transport, SocketAddr)>,
    /// The `[tls]` certificate, loaded.
    pub tls: Option<std::sync::Arc<net::tls::Tls>>,
    /// `[sip] ws_origins`.
    pub ws_origins: Vec<String>,
    pub udp_workers: usize,
    pub tcp_idle_timeout: Duration,
    pub max_message_size: usize,
    pub tcp_limits: net::StreamLimits,
    pub dispatcher: crate::dispatch_config::DispatcherSettings,
    pub default_set: i64,
    pub management: SocketAddr,
    /// The management API asks for the token.
    pub management_auth: bool,
    /// The token's file, when configured (see [`Config::token_path`]).
    pub token_file: Option<std::path::PathBuf>,
    /// The SIP secret's file, when configured (see [`Config::secret_path`]).
    pub secret_file: Option<std::path::PathBuf>,
    pub log_level: String,
    /// `sqlite://PATH`, `postgres://…` or `mysql://…`; opened only when a feature needs the
    /// database.
    pub database_url: String,
    /// Pool size and timeouts of the database connection.
    pub database_options: store::Options,
    /// The registrar, when the section is present.
    pub registrar: Option<crate::registrar_config::RegistrarSettings>,
    /// Dialog tracking, when enabled.
    pub dialog: Option<sip_proxy::dialog::DialogConfig>,
    /// Dialogs kept in the database across restarts.
    pub dialog_persist: bool,
    /// The resource balancer for calls, when the section is present.
    pub balancer: Option<crate::balancer_config::BalancerSettings>,
    /// CDRs to the database.
    pub accounting: bool,
    /// Changes each write-behind queue may hold unwritten.
    pub write_queue_limit: usize,
    /// At SIGTERM, how long the writers may take to write what they hold.
    pub shutdown_timeout: Duration,
    /// The flood defence's settings, unless it is off.
    pub pike: Option<sip_proxy::pike::PikeConfig>,
    /// Names as next hops (RFC 3263).
    pub dns: crate::dns_config::DnsSettings,
    /// Number routing, when the section is present.
    pub numbers: Option<crate::numbers_config::NumbersSettings>,
    /// The media relay and its policy, when `[rtpengine]` is present.
    pub media: Option<crate::media_config::MediaSettings>,
    /// This process as a node of a cluster sharing state on Redis.
    pub cluster: Option<crate::cluster_config::ClusterSettings>,
}

impl Config {
    /// True when a feature of this configuration reads or writes the database.
    pub fn uses_database(&self) -> bool {
        self.dispatcher.from_database
            || self.registrar.is_some()
            || (self.dialog.is_some() && self.dialog_persist)
            || self.accounting
            || self.balancer.as_ref().is_some_and(|b| b.from_database)
            || self.numbers.as_ref().is_some_and(|n| n.from_database)
            || self.media.as_ref().is_some_and(|m| m.from_database)
    }

    /// Why the SQLite database could not be opened, when it could not: its folder is missing
    /// or not writable, or the file is not readable and writable. Nothing is created.
    pub fn database_problem(&self) -> Option<String> {
        // a server's problems are found by connecting to it
        let path = self.database_url.strip_prefix("sqlite://")?;
        let p = std::path::Path::new(path);
        let writable = |p: &std::path::Path| {
            use std::os::unix::ffi::OsStrExt as _;
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: access() reads a NUL-terminated path and changes nothing.
            unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
        };
        if p.exists() {
            if p.is_dir() {
                return Some(format!("{path} is a folder, not a database file"));
            }
            return (!writable(p)).then(|| format!("{path} is not readable and writable"));
        }
        let dir = self.database_dir();
        if !dir.is_dir() {
            return Some(format!("the folder {} does not exist", dir.display()));
        }
        (!writable(&dir)).then(|| format!("the folder {} is not writable", dir.display()))
    }

    /// The folder of the SQLite database (`.` for a bare file name, or a server database).
    pub fn database_dir(&self) -> std::path::PathBuf {
        let Some(path) = self.database_url.strip_prefix("sqlite://") else {
            return ".".into();
        };
        match std::path::Path::new(path).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => ".".into(),
        }
    }

    /// Relative file paths (the SQLite database, the token and secret files) are read
    /// against `dir`, the folder of the configuration file, not the folder `switchboard`
    /// happens to be started from.
    pub fn rebase(&mut self, dir: &std::path::Path) {
        if let Some(p) = self.database_url.strip_prefix("sqlite://") {
            let p = std::path::Path::new(p);
            if p.is_relative() && !p.as_os_str().is_empty() && p != std::path::Path::new(":memory:")
            {
                self.database_url = format!("sqlite://{}", dir.join(p).display());
            }
        }
        // with a database server, the token and the SIP secret default to the configuration's
        // folder (beside a SQLite database otherwise)
        if !self.database_url.starts_with("sqlite://") {
            self.token_file
                .get_or_insert_with(|| dir.join("switchboard.token"));
            self.secret_file
                .get_or_insert_with(|| dir.join("switchboard.secret"));
        }
        for f in [&mut self.token_file, &mut self.secret_file]
            .into_iter()
            .flatten()
        {
            if f.is_relative() {
                *f = dir.join(&*f);
            }
        }
    }

    /// The SQLite file when it does not exist yet (read-only commands must not make one).
    pub fn missing_database(&self) -> Option<String> {
        let p = self.database_url.strip_prefix("sqlite://")?;
        (!std::path::Path::new(p).exists()).then(|| p.to_string())
    }

    /// Settings that are valid one by one but work against each other; `check` prints them
    /// and `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let t1 = self.proxy.timers.t1;
        if self.proxy.branch_timeout >= t1 * 64 {
            w.push(format!("transactions.branch_timeout_ms ({} ms) is not below Timer B (64 x t1_ms = {} ms): a silent destination is never failed over from", self.proxy.branch_timeout.as_millis(), (t1 * 64).as_millis()));
        }
        if self.tcp_limits.message_timeout >= self.tcp_idle_timeout {
            w.push("sip.tcp_message_timeout_s is not below sip.tcp_idle_timeout_s: a slow message outlives an idle connection".into());
        }
        if let Some(r) = &self.registrar {
            let ping = r.core.ping_interval.as_secs();
            if ping > 25 {
                w.push(format!("registrar.ping_interval_s = {ping}: many NAT routers drop a UDP binding after 30 s of silence, and users behind them stop receiving calls"));
            }
            if ping == 0 && !self.udp.is_empty() {
                w.push("registrar.ping_interval_s = 0: users behind NAT over UDP are not kept reachable (their NAT bindings expire between REGISTERs)".into());
            }
        }
        if self.balancer.is_some() && self.dispatcher.probe.interval.is_zero() {
            w.push("dispatcher.probe_interval_s = 0 with a [balancer]: its nodes are not probed, a stopped node is found only by calls that time out on it".into());
        }
        w
    }

    /// Where the SIP secret is kept: `[sip] secret_file`, or `switchboard.secret` beside the
    /// database.
    pub fn secret_path(&self) -> std::path::PathBuf {
        self.secret_file
            .clone()
            .unwrap_or_else(|| self.database_dir().join("switchboard.secret"))
    }

    /// Where the management token is kept: `[management] token_file`, or
    /// `switchboard.token` beside the database.
    pub fn token_path(&self) -> std::path::PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| self.database_dir().join("switchboard.token"))
    }
}

/// Parses TOML text. A syntax error is reported with its line; unknown keys (with the
/// nearest known one: "did you mean") and values of the wrong type are reported with their
/// section, key and line, all of them in one run: after each, the offending entry is left
/// out and the text parsed again.
/// Returns what could be read once the refused entries are left out, and the refusals.
fn parse_all(text: &str) -> (Option<RawConfig>, Vec<ConfigError>) {
    let mut text = text.to_string();
    let mut errors = Vec::new();
    for _ in 0..64 {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let msg = e.message().to_string();
        let Some(span) = e.span() else {
            // no place in the text (a missing required key): the message names it
            errors.push(err("config", "-", msg));
            return (None, errors);
        };
        let at = span.start.min(text.len());
        let line_no = text[..at].matches('\n').count() + 1;
        let Some((section, key, first, last)) = entry_at(&text, line_no) else {
            // a syntax error: nothing further can be read reliably
            errors.push(err(format!("line {line_no}"), "-", msg));
            return (None, errors);
        };
        let name = if section.is_empty() {
            key.clone()
        } else {
            format!("{section}.{key}")
        };
        let why = match unknown_field(&msg) {
            Some((field, expected)) => match nearest(&field, &expected) {
                Some(m) => format!("unknown key {field:?} (line {line_no}): did you mean {m:?}?"),
                None => format!(
                    "unknown key {field:?} (line {line_no}); known: {}",
                    expected.join(", ")
                ),
            },
            None => format!("{msg} (line {line_no})"),
        };
        let value = text
            .lines()
            .nth(first - 1)
            .and_then(|l| l.split_once('='))
            .map_or("-".to_string(), |(_, v)| v.trim().to_string());
        errors.push(err(name, value, why));
        // blank the entry out (its lines, or its whole table for an unknown section; the
        // line numbers of the rest stay) and read the rest
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 < first || i + 1 > last { l } else { "" })
            .collect();
        text = kept.join("\n");
    }
    (None, errors)
}

/// The `key = value` entry (or `[table]` header with its body) around line `line_no`:
/// (section, key, first line, last line), 1-based. `None` when the line is in no entry.
fn entry_at(text: &str, line_no: usize) -> Option<(String, String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let header = |l: &str| -> Option<String> {
        let t = l.trim();
        (t.starts_with('[') && t.ends_with(']'))
            .then(|| t.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    // the entry starts at the nearest line above (or at) line_no that begins a key or a
    // table, outside an unfinished multi-line value
    let mut starts: Vec<(usize, Option<String>)> = Vec::new(); // (line, header name)
    let mut depth = 0i32;
    for (i, l) in lines.iter().enumerate() {
        let code = strip_comment(l);
        if depth == 0 {
            if let Some(h) = header(code) {
                starts.push((i + 1, Some(h)));
            } else if code.contains('=') && !code.trim().is_empty() {
                starts.push((i + 1, None));
            }
        }
        depth += bracket_balance(code);
        depth = depth.max(0);
    }
    let idx = starts.iter().rposition(|(n, _)| *n <= line_no)?;
    let (first, hdr) = starts[idx].clone();
    let section = starts[..=idx]
        .iter()
        .rev()
        .find_map(|(_, h)| h.clone())
        .unwrap_or_default();
    match hdr {
        // a table header: the table and its body up to the next header
        Some(h) => {
            let last = starts[idx + 1..]
                .iter()
                .find(|(_, h)| h.is_some())
                .map_or(lines.len(), |(n, _)| n - 1);
            let (sec, key) = match h.rsplit_once('.') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => (String::new(), h.clone()),
            };
            Some((sec, key, first, last))
        }
        None => {
            let key = strip_comment(lines[first - 1])
                .split_once('=')?
                .0
                .trim()
                .trim_matches('"')
                .to_string();
            let last = starts
                .get(idx + 1)
                .map_or(lines.len(), |(n, _)| n - 1)
                .max(first);
            // the entry's value ends where its brackets close
            let mut depth = 0;
            let mut end = first;
            for (i, l) in lines.iter().enumerate().take(last).skip(first - 1) {
                depth += bracket_balance(strip_comment(l));
                end = i + 1;
                if depth <= 0 {
                    break;
                }
            }
            (line_no <= end.max(first)).then_some((section, key, first, end))
        }
    }
}

/// The line without a trailing `# comment` (a `#` inside quotes stays).
fn strip_comment(l: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in l.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &l[..i],
            _ => {}
        }
    }
    l
}

/// Opening minus closing brackets and braces outside quotes.
fn bracket_balance(l: &str) -> i32 {
    let mut quote: Option<char> = None;
    let mut n = 0;
    for c in l.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '[' | '{') => n += 1,
            (None, ']' | '}') => n -= 1,
            _ => {}
        }
    }
    n
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`"): the field and
/// the known names.
fn unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

/// The known name closest to `field` (by edit distance, at most a third of its length).
fn nearest(field: &str, known: &[String]) -> Option<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + (ca != *cb) as usize)
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let f = field.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (distance(&f, k), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1) || k.contains(&f) || f.contains(k.as_str()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

pub fn parse_destination(key: &str, s: &str) -> Result<Destination, ConfigError> {
    Destination::from_uri(s).map_err(|e| {
        let why = e.to_string();
        // the error starts with the value itself: the key's line names it already
        let why = why
            .strip_prefix(&format!("{s:?}: "))
            .unwrap_or(&why)
            .to_string();
        err(key, format!("{s:?}"), why)
    })
}

/// A destination that must be an IP address (a balancer node: its calls are counted and
/// its health probed per address).
pub fn parse_address_destination(key: &str, s: &str) -> Result<Destination, ConfigError> {
    let d = parse_destination(key, s)?;
    if d.name.is_some() {
        return Err(err(
            key,
            format!("{s:?}"),
            "a balancer node must be an IP address (its calls are counted per address); names are for dispatcher destinations",
        ));
    }
    Ok(d)
}

/// Validates a raw configuration, collecting every error.
pub fn validate(raw: RawConfig, salt: u64) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut udp = Vec::new();
    let mut streams = Vec::new();
    let mut listeners = Vec::new();
    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| crate::tls_config::validate(t, &mut errors));
    let media =
        crate::media_config::validate(raw.rtpengine.as_ref(), raw.media.as_ref(), &mut errors);
    if raw.sip.listen.is_empty() {
        errors.push(err(
            "sip.listen",
            "[]",
            "at least one listen socket is needed",
        ));
    }
    let mut bound = Vec::new();
    for (i, l) in raw.sip.listen.iter().enumerate() {
        let key = format!("sip.listen[{i}]");
        // "udp:10.0.0.5:5060 advertise 203.0.113.5:5060" (Kamailio's listen ... advertise)
        let (l, advertised) = match l.split_once(" advertise ") {
            Some((l, adv)) => match adv.trim().parse::<SocketAddr>() {
                Ok(a) if !a.ip().is_unspecified() && a.port() != 0 => (l.trim(), Some(a)),
                _ => {
                    errors.push(err(
                        &key,
                        format!("{adv:?}"),
                        "the advertised address must be a public IP:port, e.g. 203.0.113.5:5060",
                    ));
                    continue;
                }
            },
            None => (l.as_str(), None),
        };
        let Some((t, a)) = l.split_once(':') else {
            errors.push(err(
                &key,
                format!("{l:?}"),
                "expected transport:address:port, e.g. udp:127.0.0.1:5060",
            ));
            continue;
        };
        let addr: SocketAddr = match a.parse() {
            Ok(a) => a,
            Err(_) => {
                errors.push(err(
                    &key,
                    format!("{l:?}"),
                    "address must be IP:port ([v6]:port for IPv6)",
                ));
                continue;
            }
        };
        if addr.ip().is_unspecified() && advertised.is_none() {
            errors.push(err(
                &key,
                format!("{l:?}"),
                "listen on a specific address (it is advertised in Via and Record-Route), or give the address to advertise: \"udp:0.0.0.0:5060 advertise 203.0.113.5:5060\"",
            ));
            continue;
        }
        match Transport::parse(t) {
            Some(Transport::Udp) => udp.push(addr),
            Some(Transport::Tls | Transport::Wss) if raw.tls.is_none() => {
                errors.push(err(
                    &key,
                    format!("{l:?}"),
                    format!("a {t} listener needs a certificate: add a [tls] section with certificate and private_key"),
                ));
                continue;
            }
            Some(tp @ (Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss)) => {
                streams.push((tp, addr))
            }
            None => {
                errors.push(err(
                    &key,
                    format!("{l:?}"),
                    format!("unknown transport {t:?} (udp, tcp, tls, ws, wss)"),
                ));
                continue;
            }
        }
        if advertised.is_some() {
            bound.push(addr);
        }
        listeners.push(Listener {
            transport: Transport::parse(t).unwrap_or(Transport::Udp),
            advertise: advertised.unwrap_or(addr),
        });
    }
    for (i, o) in raw.sip.ws_origins.iter().enumerate() {
        let ok = o.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https")
                && !host.is_empty()
                && !host.trim_end_matches('/').contains(['/', ' ', '?', '#'])
        });
        if !ok {
            errors.push(err(
                format!("sip.ws_origins[{i}]"),
                format!("{o:?}"),
                "an origin is scheme://host[:port], e.g. \"https://agents.example.com\"",
            ));
        }
    }
    if raw.sip.max_message_size < 1024 || raw.sip.max_message_size > 1 << 20 {
        errors.push(err(
            "sip.max_message_size",
            raw.sip.max_message_size,
            "must be between 1024 and 1048576",
        ));
    }
    let sip = &raw.sip;
    for (key, v, lo, hi) in [
        ("sip.max_headers", sip.max_headers as u64, 16, 10_000),
        ("sip.max_vias", sip.max_vias as u64, 2, 1000),
        (
            "sip.max_transactions_per_source",
            sip.max_transactions_per_source as u64,
            0,
            10_000_000,
        ),
        (
            "sip.tcp_max_connections",
            sip.tcp_max_connections as u64,
            1,
            1_000_000,
        ),
        (
            "sip.tcp_max_connections_per_ip",
            sip.tcp_max_connections_per_ip as u64,
            1,
            1_000_000,
        ),
        (
            "sip.tcp_message_timeout_s",
            sip.tcp_message_timeout_s,
            1,
            3600,
        ),
        (
            "sip.tcp_send_queue_kb",
            sip.tcp_send_queue_kb as u64,
            4,
            1 << 20,
        ),
        ("sip.tcp_write_timeout_s", sip.tcp_write_timeout_s, 1, 3600),
        (
            "sip.tcp_listen_backlog",
            sip.tcp_listen_backlog as u64,
            16,
            1 << 20,
        ),
    ] {
        if !(lo..=hi).contains(&v) {
            errors.push(err(key, v, format!("must be {lo}..={hi}")));
        }
    }
    let t = &raw.transactions;
    if t.t1_ms == 0 || t.t1_ms > 10_000 {
        errors.push(err("transactions.t1_ms", t.t1_ms, "must be 1..=10000"));
    }
    if t.t2_ms < t.t1_ms {
        errors.push(err("transactions.t2_ms", t.t2_ms, "must be at least t1_ms"));
    }
    if t.t4_ms == 0 {
        errors.push(err("transactions.t4_ms", t.t4_ms, "must be positive"));
    }
    if t.branch_timeout_ms < 100 {
        errors.push(err(
            "transactions.branch_timeout_ms",
            t.branch_timeout_ms,
            "must be at least 100",
        ));
    }
    let mut failover_codes = Vec::new();
    for (i, c) in t.failover_codes.iter().enumerate() {
        if !(300..=699).contains(c) {
            errors.push(err(
                format!("transactions.failover_codes[{i}]"),
                c,
                "must be a final status code (300..=699)",
            ));
        } else {
            failover_codes.push(*c as u16);
        }
    }
    let dispatcher = crate::dispatch_config::validate(&raw.dispatcher, &mut errors);
    let registrar = raw
        .registrar
        .as_ref()
        .map(|r| crate::registrar_config::validate(r, &mut errors));
    if raw.dialog.lifetime_s < 10 || raw.dialog.lifetime_s > 7 * 86400 {
        errors.push(err(
            "dialog.lifetime_s",
            raw.dialog.lifetime_s,
            "must be 10..=604800 seconds",
        ));
    }
    let balancer = raw
        .balancer
        .as_ref()
        .map(|b| crate::balancer_config::validate(b, &mut errors));
    let security = crate::security_config::validate(&raw.security, &mut errors);
    let dns = crate::dns_config::validate(&raw.dns, &mut errors);
    let cluster = raw
        .cluster
        .as_ref()
        .map(|c| crate::cluster_config::validate(c, &mut errors));
    let user_auth = registrar.as_ref().is_some_and(|r| r.core.auth);
    let numbers = raw
        .numbers
        .as_ref()
        .map(|n| crate::numbers_config::validate(n, user_auth, &mut errors));
    if raw.accounting.enabled && !raw.dialog.enabled {
        errors.push(err(
            "accounting.enabled",
            "true",
            "a call is accounted when its dialog ends: enable dialog tracking",
        ));
    }
    if balancer.is_some() && !raw.dialog.enabled {
        errors.push(err(
            "dialog.enabled",
            "false",
            "the balancer counts calls for as long as their dialogs live: enable dialog tracking",
        ));
    }
    let dialog = raw.dialog.enabled.then(|| sip_proxy::dialog::DialogConfig {
        lifetime: Duration::from_secs(raw.dialog.lifetime_s),
        honour_session_expires: raw.dialog.honour_session_expires,
        user_agent: security.server_header.as_str().into(),
        // drawn by the binary when it builds the table (see main.rs)
        hash_key: (0, 0),
    });
    let ids: std::collections::HashSet<i64> = dispatcher.sets.iter().map(|s| s.id).collect();
    let default_set = match raw.routing.default_set {
        Some(id) if ids.contains(&id) => id,
        Some(id) => {
            errors.push(err(
                "routing.default_set",
                id,
                "no dispatcher.set has this id",
            ));
            id
        }
        None => {
            errors.push(err(
                "routing.default_set",
                "(missing)",
                "name the set that receives initial requests",
            ));
            0
        }
    };
    let (media_servers_by_address, loopback_by_port) =
        match raw.routing.match_media_servers.as_str() {
            "auto" => (true, true),
            "address" => (true, false),
            "address-port" => (false, false),
            other => {
                errors.push(err(
                    "routing.match_media_servers",
                    format!("{other:?}"),
                    "must be \"auto\", \"address\" (any port) or \"address-port\"",
                ));
                (true, true)
            }
        };
    let management: SocketAddr = match raw.management.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(err(
                "management.listen",
                format!("{:?}", raw.management.listen),
                "must be IP:port",
            ));
            "127.0.0.1:8888".parse().expect("literal")
        }
    };
    if !raw.management.auth && !management.ip().is_loopback() {
        errors.push(err(
            "management.auth",
            "false",
            format!("the management API listens on {management}, beyond loopback: it needs its token there"),
        ));
    }
    if raw
        .management
        .token_file
        .as_deref()
        .is_some_and(|f| f.trim().is_empty())
    {
        errors.push(err("management.token_file", "\"\"", "must name a file"));
    }
    if !matches!(
        raw.log.level.as_str(),
        "error" | "warn" | "info" | "debug" | "trace"
    ) {
        errors.push(err(
            "log.level",
            format!("{:?}", raw.log.level),
            "must be error, warn, info, debug or trace",
        ));
    }
    let db = raw.database.url.trim();
    let rest = db.split_once("://").map(|x| x.1).unwrap_or_default();
    if store::Dialect::of_url(db).is_none() || rest.is_empty() {
        errors.push(err(
            "database.url",
            format!("{:?}", store::redact(db)),
            "must be sqlite://PATH, postgres://USER:PASSWORD@HOST:PORT/DATABASE or mysql://USER:PASSWORD@HOST:PORT/DATABASE",
        ));
    } else if !db.starts_with("sqlite://") && !rest.contains('/') {
        errors.push(err(
            "database.url",
            format!("{:?}", store::redact(db)),
            "names no database (…@HOST:PORT/DATABASE)",
        ));
    }
    if !(1..=100).contains(&raw.database.pool_size) {
        errors.push(err(
            "database.pool_size",
            raw.database.pool_size,
            "must be 1..=100 connections",
        ));
    }
    if !(1..=120).contains(&raw.database.connect_timeout_s) {
        errors.push(err(
            "database.connect_timeout_s",
            raw.database.connect_timeout_s,
            "must be 1..=120 seconds",
        ));
    }
    if !(100..=10_000_000).contains(&raw.database.write_queue_limit) {
        errors.push(err(
            "database.write_queue_limit",
            raw.database.write_queue_limit,
            "must be 100..=10000000 changes",
        ));
    }
    if !(1..=300).contains(&raw.database.flush_timeout_s) {
        errors.push(err(
            "database.flush_timeout_s",
            raw.database.flush_timeout_s,
            "must be 1..=300 seconds",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let proxy = ProxyConfig {
        listeners,
        aliases: raw.sip.aliases.clone(),
        timers: TimerConfig {
            t1: Duration::from_millis(t.t1_ms),
            t2: Duration::from_millis(t.t2_ms),
            t4: Duration::from_millis(t.t4_ms),
        },
        branch_timeout: Duration::from_millis(t.branch_timeout_ms),
        failover_codes,
        salt,
        max_message_size: raw.sip.max_message_size,
        server: security.server_header.as_str().into(),
        detailed_reasons: security.detailed_reasons,
        reply_cache_bytes: security.reply_cache_bytes,
        max_transactions_per_source: raw.sip.max_transactions_per_source,
        max_headers: raw.sip.max_headers,
        max_vias: raw.sip.max_vias,
        media_servers_by_address,
        loopback_by_port,
        bound,
        ..ProxyConfig::default()
    };
    Ok(Config {
        proxy,
        udp,
        streams,
        tls,
        ws_origins: raw.sip.ws_origins.clone(),
        udp_workers: raw.sip.udp_workers,
        tcp_idle_timeout: Duration::from_secs(raw.sip.tcp_idle_timeout_s.max(1)),
        max_message_size: raw.sip.max_message_size,
        tcp_limits: net::StreamLimits {
            max_connections: raw.sip.tcp_max_connections,
            max_per_ip: raw.sip.tcp_max_connections_per_ip,
            message_timeout: Duration::from_secs(raw.sip.tcp_message_timeout_s),
            send_queue: raw.sip.tcp_send_queue_kb << 10,
            write_timeout: Duration::from_secs(raw.sip.tcp_write_timeout_s),
            backlog: raw.sip.tcp_listen_backlog,
        },
        dispatcher,
        default_set,
        management,
        management_auth: raw.management.auth,
        token_file: raw.management.token_file.as_ref().map(Into::into),
        secret_file: raw.sip.secret_file.as_ref().map(Into::into),
        log_level: raw.log.level,
        database_url: raw.database.url.trim().to_string(),
        database_options: store::Options {
            pool_size: raw.database.pool_size,
            connect_timeout: Duration::from_secs(raw.database.connect_timeout_s),
        },
        registrar,
        dialog,
        dialog_persist: raw.dialog.persist,
        balancer,
        accounting: raw.accounting.enabled,
        write_queue_limit: raw.database.write_queue_limit,
        shutdown_timeout: Duration::from_secs(raw.database.flush_timeout_s),
        pike: security.pike,
        dns,
        numbers,
        media,
        cluster,
    })
}

/// Parses and validates.
pub fn load(text: &str, salt: u64) -> Result<Config, Vec<ConfigError>> {
    let (raw, mut errors) = parse_all(text);
    // what could be read is validated too: every refusal in one run
    match (raw.map(|r| validate(r, salt)), errors.is_empty()) {
        (Some(Ok(c)), true) => Ok(c),
        (Some(Err(more)), _) => {
            errors.extend(more);
            Err(errors)
        }
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_matches_the_issue() {
        let c = load(EMBEDDED_DEFAULT, 1).unwrap();
        assert_eq!(c.udp, vec!["127.0.0.1:5060".parse::<SocketAddr>().unwrap()]);
        assert_eq!(
            c.streams,
            vec![(
                Transport::Tcp,
                "127.0.0.1:5060".parse::<SocketAddr>().unwrap()
            )]
        );
        let ports: Vec<u16> = c.dispatcher.sets[0]
            .destinations
            .iter()
            .map(|d| d.addr.port())
            .collect();
        assert_eq!(ports, vec![5080, 5082]);
        assert_eq!(
            c.management,
            "127.0.0.1:8888".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn example_file_equals_embedded_default() {
        let on_disk = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../switchboard.example.toml"
        ))
        .unwrap();
        assert_eq!(on_disk, EMBEDDED_DEFAULT);
    }

    #[test]
    fn dialog_section_is_validated() {
        assert!(
            load(EMBEDDED_DEFAULT, 1).unwrap().dialog.is_none(),
            "off by default"
        );
        let on = EMBEDDED_DEFAULT.replace(
            "enabled = false\nlifetime_s = 21600",
            "enabled = true\nlifetime_s = 60",
        );
        let d = load(&on, 1).unwrap().dialog.unwrap();
        assert_eq!(d.lifetime.as_secs(), 60);
        let bad = EMBEDDED_DEFAULT.replace("lifetime_s = 21600", "lifetime_s = 5");
        let e = load(&bad, 1).unwrap_err();
        assert_eq!(e[0].key, "dialog.lifetime_s");
    }

    /// Without its token the management API may listen on loopback only; the token and the
    /// secret live beside the database unless configured.
    #[test]
    fn management_without_a_token_stays_on_loopback() {
        let with = |m: &str| {
            load(
                &format!("[dispatcher]\n[[dispatcher.set]]\nid = 1\ndestinations = [\"sip:127.0.0.1:5080\"]\n[routing]\ndefault_set = 1\n[database]\nurl = \"sqlite:///var/lib/sb/sb.db\"\n[management]\n{m}\n"),
                1,
            )
        };
        let e = with("listen = \"0.0.0.0:8888\"\nauth = false").unwrap_err();
        assert!(e.iter().any(|x| x.key == "management.auth"), "{e:?}");
        assert!(with("listen = \"127.0.0.1:8888\"\nauth = false").is_ok());
        let c = with("listen = \"0.0.0.0:8888\"").unwrap();
        assert_eq!(
            c.token_path(),
            std::path::Path::new("/var/lib/sb/switchboard.token")
        );
        assert_eq!(
            c.secret_path(),
            std::path::Path::new("/var/lib/sb/switchboard.secret")
        );
        let c = with("token_file = \"/etc/sb/t\"").unwrap();
        assert_eq!(c.token_path(), std::path::Path::new("/etc/sb/t"));
    }

    #[test]
    fn a_database_that_cannot_be_opened_is_found_without_creating_it() {
        let with = |url: &str| {
            load(
                &format!("[dispatcher]\n[[dispatcher.set]]\nid = 1\ndestinations = [\"sip:127.0.0.1:5080\"]\n[routing]\ndefault_set = 1\n[database]\nurl = \"{url}\"\n[registrar]\n"),
                1,
            )
            .unwrap()
        };
        let c = with("sqlite:///nonexistent-sb/dir/sb.db");
        assert!(c.uses_database());
        assert_eq!(
            c.database_problem().as_deref(),
            Some("the folder /nonexistent-sb/dir does not exist")
        );
        let dir = std::env::temp_dir();
        let c = with(&format!("sqlite://{}", dir.display()));
        assert!(c.database_problem().unwrap().contains("is a folder"));
        let c = with(&format!(
            "sqlite://{}/sb-check-{}.db",
            dir.display(),
            std::process::id()
        ));
        assert_eq!(c.database_problem(), None);
        assert!(
            !dir.join(format!("sb-check-{}.db", std::process::id()))
                .exists(),
            "nothing created"
        );
        assert!(!load(EMBEDDED_DEFAULT, 1).unwrap().uses_database());
    }

    #[test]
    fn server_database_urls_and_their_settings_are_checked() {
        let with = |db: &str| {
            load(
                &format!("[dispatcher]\n[[dispatcher.set]]\nid = 1\ndestinations = [\"sip:127.0.0.1:5080\"]\n[routing]\ndefault_set = 1\n[database]\n{db}\n[registrar]\n"),
                1,
            )
        };
        for url in [
            "postgres://sb:pw@db.example:5432/sb",
            "postgresql://sb@127.0.0.1/sb?sslmode=require",
            "mysql://sb:pw@127.0.0.1:3306/sb",
            "mariadb://sb:pw@127.0.0.1/sb",
        ] {
            let c = with(&format!(
                "url = \"{url}\"\npool_size = 8\nconnect_timeout_s = 3"
            ))
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
            assert_eq!(c.database_options.pool_size, 8);
            assert_eq!(c.database_options.connect_timeout, Duration::from_secs(3));
            // nothing to check on disk for a server
            assert_eq!(c.database_problem(), None);
            assert_eq!(c.missing_database(), None);
        }
        for (db, key, why) in [
            (
                "url = \"redis://127.0.0.1\"",
                "database.url",
                "must be sqlite://PATH",
            ),
            (
                "url = \"postgres://\"",
                "database.url",
                "must be sqlite://PATH",
            ),
            (
                "url = \"mysql://sb:pw@127.0.0.1:3306\"",
                "database.url",
                "names no database",
            ),
            (
                "url = \"sqlite://x.db\"\npool_size = 0",
                "database.pool_size",
                "1..=100",
            ),
            (
                "url = \"sqlite://x.db\"\nconnect_timeout_s = 0",
                "database.connect_timeout_s",
                "1..=120",
            ),
        ] {
            let e = with(db).unwrap_err();
            let m = e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            assert!(m.contains(key) && m.contains(why), "{db}: {m}");
        }
        // the password stays out of the message
        let e = with("url = \"pgsql://sb:s3cret@h/sb\"").unwrap_err();
        assert!(!e[0].to_string().contains("s3cret"), "{}", e[0]);
        // with a server, the token and the secret default to the configuration's folder
        let mut c = with("url = \"postgres://sb:pw@h/sb\"").unwrap();
        c.rebase(std::path::Path::new("/etc/switchboard"));
        assert_eq!(
            c.token_path(),
            std::path::PathBuf::from("/etc/switchboard/switchboard.token")
        );
        assert_eq!(
            c.secret_path(),
            std::path::PathBuf::from("/etc/switchboard/switchboard.secret")
        );
        assert_eq!(c.database_url, "postgres://sb:pw@h/sb", "not rebased");
    }

    #[test]
    fn the_store_and_the_core_agree_on_id_ranges() {
        assert_eq!(store::ID_COUNTER_BITS, sip_proxy::ID_COUNTER_BITS);
        // the highest range's ids stay exact as JSON numbers
        let top = (store::ID_NODES as u64) << store::ID_COUNTER_BITS;
        assert!(top <= 1 << 53);
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let e = load(
            &format!("{EMBEDDED_DEFAULT}\n[frobnicator]\nzorglub_level = 3\n"),
            1,
        )
        .unwrap_err();
        assert!(e[0].to_string().contains("frobnicator"), "{}", e[0]);
        let e = load("[sip]\nlisten = []\nbogus = 1\n", 1).unwrap_err();
        assert!(e[0].to_string().contains("bogus"), "{}", e[0]);
    }

    #[test]
    fn relative_paths_are_read_against_the_config_folder() {
        let mut c = load(
            &EMBEDDED_DEFAULT
                .replace(
                    "# token_file = \"/etc/switchboard/switchboard.token\"",
                    "token_file = \"run/sb.token\"",
                )
                .replace(
                    "url = \"sqlite://switchboard.db\"",
                    "url = \"sqlite://data/sb.db\"",
                ),
            1,
        )
        .unwrap();
        c.rebase(std::path::Path::new("/etc/switchboard"));
        assert_eq!(c.database_url, "sqlite:///etc/switchboard/data/sb.db");
        assert_eq!(
            c.token_path(),
            std::path::PathBuf::from("/etc/switchboard/run/sb.token")
        );
        assert_eq!(
            c.secret_path(),
            std::path::PathBuf::from("/etc/switchboard/data/switchboard.secret"),
            "beside the database"
        );
        // absolute ones stay
        let mut c = load(
            &EMBEDDED_DEFAULT.replace(
                "url = \"sqlite://switchboard.db\"",
                "url = \"sqlite:///var/lib/sb.db\"",
            ),
            1,
        )
        .unwrap();
        c.rebase(std::path::Path::new("/etc/switchboard"));
        assert_eq!(c.database_url, "sqlite:///var/lib/sb.db");
        assert_eq!(c.missing_database().as_deref(), Some("/var/lib/sb.db"));
    }

    #[test]
    fn a_listener_advertises_its_public_address() {
        let c = load(
            &EMBEDDED_DEFAULT.replace(
                r#"listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]"#,
                r#"listen = ["udp:0.0.0.0:5060 advertise 203.0.113.5:5060", "tcp:127.0.0.1:5060"]"#,
            ),
            1,
        )
        .unwrap();
        assert_eq!(c.udp, vec!["0.0.0.0:5060".parse::<SocketAddr>().unwrap()]);
        assert_eq!(
            c.proxy.listeners[0].advertise,
            "203.0.113.5:5060".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.proxy.listeners[1].advertise, c.streams[0].1);
        assert_eq!(
            c.proxy.bound,
            vec!["0.0.0.0:5060".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn bad_values_are_refused_with_key_and_reason() {
        let text = r#"
[sip]
listen = ["udp:127.0.0.1:5060", "sctp:127.0.0.1:5060", "udp:0.0.0.0:5060", "udp:nope", "tcp:127.0.0.1:5060 advertise 0.0.0.0:5060", "tcp:127.0.0.1:5060 advertise sip.example.com"]
[transactions]
t1_ms = 0
failover_codes = [200]
[[dispatcher.set]]
id = 1
algorithm = "zigzag"
destinations = ["sip:bad_host.example", "http://x", "sip:127.0.0.1:5080;transport=carrier-pigeon"]
[[dispatcher.set]]
id = 1
destinations = []
[routing]
default_set = 9
[management]
listen = "nowhere"
[log]
level = "loud"
"#;
        let errs = load(text, 1).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "sip.listen[1]",
            "sip.listen[2]",
            "sip.listen[3]",
            "sip.listen[4]",
            "sip.listen[5]",
            "transactions.t1_ms",
            "transactions.failover_codes[0]",
            "dispatcher.set[0].algorithm",
            "dispatcher.set[0].destinations[0].uri",
            "dispatcher.set[0].destinations[1].uri",
            "dispatcher.set[0].destinations[2].uri",
            "dispatcher.set[1].id",
            "dispatcher.set[1].destinations",
            "routing.default_set",
            "management.listen",
            "log.level",
        ] {
            assert!(keys.contains(&k), "missing error for {k}: {keys:?}");
        }
        assert!(errs.iter().all(|e| !e.why.is_empty()));
    }

    #[test]
    fn dispatcher_refusals_name_key_and_reason() {
        let text = r#"
[dispatcher]
probe_reply_codes = "code=abc"
probe_mode = "sometimes"
probe_method = "PING"
max_attempts = 0
[[dispatcher.set]]
id = 1
algorithm = 42
destinations = [
  { uri = "sip:127.0.0.1:5080", weight = -1 },
  { uri = "sip:127.0.0.1:5082", colour = "red" },
  { weight = 2 },
  "sip:127.0.0.1:5088",
  "sip:127.0.0.1:5088",
  { uri = "sip:127.0.0.1:5086", state = "sleepy" },
]
[[dispatcher.set]]
id = 2
algorithm = "hash-value"
destinations = ["sip:127.0.0.1:5090", "sip:127.0.0.1:5090"]
[routing]
default_set = 1
"#;
        let errs = load(text, 1).unwrap_err();
        let find = |k: &str| {
            errs.iter()
                .find(|e| e.key == k)
                .unwrap_or_else(|| panic!("no error for {k}: {errs:?}"))
        };
        assert!(find("dispatcher.probe_reply_codes")
            .why
            .contains("not a number"));
        find("dispatcher.probe_mode");
        find("dispatcher.probe_method");
        find("dispatcher.max_attempts");
        assert!(find("dispatcher.set[0].algorithm")
            .why
            .contains("unknown algorithm"));
        assert!(find("dispatcher.set[0].destinations[0].weight")
            .why
            .contains("0..=10000"));
        assert!(find("dispatcher.set[0].destinations[1].colour")
            .why
            .contains("unknown key"));
        assert!(find("dispatcher.set[0].destinations[2].uri")
            .why
            .contains("needs a uri"));
        assert!(find("dispatcher.set[0].destinations[4]")
            .why
            .contains("duplicate destination"));
        find("dispatcher.set[0].destinations[5].state");
        find("dispatcher.set[1].hash_header");
        find("dispatcher.set[1].destinations[1]");
    }

    #[test]
    fn destination_tables_and_numbers_are_accepted() {
        let text = r#"
[[dispatcher.set]]
id = 7
algorithm = 9
destinations = [{ uri = "sip:127.0.0.1:5080;transport=tcp", weight = 3, priority = 2, attrs = "pstn", description = "fs1" }, "sip:[::1]:5082"]
[routing]
default_set = 7
"#;
        let c = load(text, 1).unwrap();
        let s = &c.dispatcher.sets[0];
        assert_eq!(
            s.algorithm,
            sip_proxy::dispatcher::Algorithm::WeightedRandom
        );
        assert_eq!(
            (
                s.destinations[0].weight,
                s.destinations[0].priority,
                s.destinations[0].transport
            ),
            (3, 2, Transport::Tcp)
        );
        assert_eq!(s.destinations[1].addr, "[::1]:5082".parse().unwrap());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = load("[sip]\nlisten = [\n", 1).unwrap_err();
        assert!(e[0].key.starts_with("line"), "{:?}", e[0]);
    }

    #[test]
    fn every_key_and_type_error_in_one_run_with_section_and_a_suggestion() {
        let text = EMBEDDED_DEFAULT
            .replace(
                "udp_workers = 0",
                "udp_workers = \"four\"\nlisten_backlog = 5",
            )
            .replace("t1_ms = 500", "t1_ms = 500\nbranch_timeout = 2000")
            .replace("[log]", "[logging]\nlevel = 1\n[log]")
            .replace("probe_interval_s = 5", "probe_interval_s = [\n  5,\n]");
        let e = load(&text, 1).unwrap_err();
        let shown: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        let has = |key: &str, why: &str| e.iter().any(|x| x.key == key && x.why.contains(why));
        assert!(has("sip.udp_workers", "invalid type"), "{shown:#?}");
        assert!(
            has("sip.listen_backlog", "did you mean \"tcp_listen_backlog\""),
            "{shown:#?}"
        );
        assert!(
            has(
                "transactions.branch_timeout",
                "did you mean \"branch_timeout_ms\""
            ),
            "{shown:#?}"
        );
        assert!(has("logging", "did you mean \"log\""), "{shown:#?}");
        assert!(
            has("dispatcher.probe_interval_s", "invalid type"),
            "{shown:#?}"
        );
        assert_eq!(e.len(), 5, "{shown:#?}");
        assert!(e.iter().all(|x| x.why.contains("(line ")), "{shown:#?}");
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(
            has(
                "sip.listen_backlog",
                &format!("(line {})", line_of("listen_backlog = 5"))
            ),
            "line numbers of the original text: {shown:#?}"
        );
        // the values that could be read are validated in the same run
        let e = load(&text.replace("t1_ms = 500", "t1_ms = 0"), 1).unwrap_err();
        assert!(e.iter().any(|x| x.key == "transactions.t1_ms"), "{e:?}");
        assert_eq!(e.len(), 6);
        // a key nothing resembles lists the known ones
        let e = load("[sip]\nzzzzzz = 1\n", 1).unwrap_err();
        assert!(e[0].why.contains("known: listen"), "{e:?}");
    }
}

/// The keys the parser knows against the keys the example file and the README show.
#[cfg(test)]
mod documented {
    use super::*;
    use std::collections::BTreeSet;

    /// The tables of the configuration, as written in TOML.
    const TABLES: [(&str, bool); 27] = [
        ("sip", false),
        ("cluster", false),
        ("tls", false),
        ("rtpengine", false),
        ("media", false),
        ("media.rule", true),
        ("transactions", false),
        ("dispatcher", false),
        ("dispatcher.set", true),
        ("routing", false),
        ("management", false),
        ("log", false),
        ("database", false),
        ("registrar", false),
        ("dialog", false),
        ("balancer", false),
        ("balancer.node", true),
        ("balancer.rule", true),
        ("accounting", false),
        ("security", false),
        ("dns", false),
        ("numbers", false),
        ("numbers.route", true),
        ("numbers.dialplan", true),
        ("numbers.gateway", true),
        ("numbers.carrier", true),
        ("numbers.rule", true),
    ];

    /// The keys the parser accepts in `table`: the list its refusal of an unknown key gives.
    fn parser_keys(table: &str, array: bool) -> BTreeSet<String> {
        let head = if array {
            format!("[[{table}]]")
        } else {
            format!("[{table}]")
        };
        let msg = match toml::from_str::<RawConfig>(&format!("{head}\nzz_not_a_key = 1\n")) {
            Err(e) => e.message().to_string(),
            Ok(_) => panic!("{table}: an unknown key was accepted"),
        };
        let (field, known) = unknown_field(&msg).unwrap_or_else(|| panic!("{table}: {msg}"));
        assert_eq!(field, "zz_not_a_key");
        known.into_iter().collect()
    }

    /// `table.key` of every key the example shows, set or commented out (`# key = ...`
    /// under a `[table]` or `# [table]` header).
    fn example_keys() -> BTreeSet<String> {
        let mut table = String::new();
        let mut out = BTreeSet::new();
        for line in EMBEDDED_DEFAULT.lines() {
            let l = line.trim().trim_start_matches('#').trim();
            if l.starts_with('[') && l.ends_with(']') && !l.contains(' ') {
                table = l.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            let Some((k, _)) = l.split_once('=') else {
                continue;
            };
            let k = k.trim();
            if !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            {
                out.insert(format!("{table}.{k}"));
            }
        }
        out
    }

    #[test]
    fn the_example_documents_every_key_the_parser_knows_and_no_other() {
        let mut parser = BTreeSet::new();
        for (t, array) in TABLES {
            for k in parser_keys(t, array) {
                // a table inside this one is listed as its own table
                if !TABLES.iter().any(|(x, _)| *x == format!("{t}.{k}")) {
                    parser.insert(format!("{t}.{k}"));
                }
            }
        }
        let example = example_keys();
        let undocumented: Vec<_> = parser.difference(&example).collect();
        let unknown: Vec<_> = example.difference(&parser).collect();
        assert!(
            undocumented.is_empty(),
            "keys the parser knows that switchboard.example.toml does not show: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "keys switchboard.example.toml shows that the parser refuses: {unknown:?}"
        );
    }

    #[test]
    fn the_readme_table_names_every_section() {
        let readme = include_str!("../../../README.md");
        let table = &readme[readme
            .find("## Configuration")
            .expect("a Configuration section")..];
        for (t, array) in TABLES {
            let name = if array {
                format!("`[[{t}]]`")
            } else {
                format!("`[{t}]`")
            };
            assert!(
                table.contains(&name),
                "the README's configuration table lacks {name}"
            );
        }
    }
}

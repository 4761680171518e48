//! `[rtpengine]` (the media relay's instances and timing) and `[media]` (when calls are
//! relayed), and the runner that turns the core's media commands into NG requests.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rtpengine::{Client, Failure, InstanceConfig, Kind, Value};
use serde::Deserialize;
use sip_proxy::media::{MediaConfig, MediaError, MediaOp, MediaRequest, Relay};

use crate::config::{err, ConfigError};

/// An instance: `"udp:IP:PORT"` (set 0, weight 1) or `{ socket, set, weight }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawInstance {
    Socket(String),
    Table(RawInstanceTable),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawInstanceTable {
    pub socket: String,
    #[serde(default)]
    pub set: u32,
    #[serde(default = "d_weight")]
    pub weight: u32,
}

fn d_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRtpengine {
    /// Where the instances are: `config` (`instances`) or `database` (OpenSIPS'
    /// `rtpengine` table: socket, set_id).
    #[serde(default = "d_source")]
    pub source: String,
    /// The instances.
    #[serde(default)]
    pub instances: Vec<RawInstance>,
    /// How long one try waits for an answer.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Tries after the first, with the same cookie.
    #[serde(default = "d_retries")]
    pub retries: u32,
    /// Health pings.
    #[serde(default = "d_ping")]
    pub ping_interval_s: u64,
}

fn d_source() -> String {
    "config".into()
}
fn d_timeout() -> u64 {
    300
}
fn d_retries() -> u32 {
    2
}
fn d_ping() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMedia {
    /// `auto` (browsers and NAT), `always` or `never`.
    #[serde(default = "d_relay")]
    pub relay: String,
    /// The rtpengine set of new calls.
    #[serde(default)]
    pub set: u32,
    /// Codecs the SIP side takes: a browser offering none of them is transcoded.
    #[serde(default = "d_codecs")]
    pub sip_codecs: Vec<String>,
    /// A failed offer refuses the call (503); off: SIP-to-SIP calls go on unrelayed.
    #[serde(default = "d_true")]
    pub refuse_on_failure: bool,
    /// How long a call waits for the relay's answer.
    #[serde(default = "d_wait")]
    pub wait_ms: u64,
    /// Overrides per source network.
    #[serde(default)]
    pub rule: Vec<RawMediaRule>,
}

/// `[[media.rule]]`: calls from these networks get this policy and set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMediaRule {
    pub sources: Vec<String>,
    pub relay: Option<String>,
    pub set: Option<u32>,
}

impl Default for RawMedia {
    fn default() -> Self {
        RawMedia {
            relay: d_relay(),
            set: 0,
            sip_codecs: d_codecs(),
            refuse_on_failure: true,
            wait_ms: d_wait(),
            rule: Vec::new(),
        }
    }
}

fn d_relay() -> String {
    "auto".into()
}
fn d_codecs() -> Vec<String> {
    vec!["PCMU".into(), "PCMA".into()]
}
fn d_true() -> bool {
    true
}
fn d_wait() -> u64 {
    2000
}

/// The validated media settings (present when `[rtpengine]` is).
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// The instances of the configuration (empty with `from_database`).
    pub instances: Vec<InstanceConfig>,
    /// The instances are the rows of the `rtpengine` table.
    pub from_database: bool,
    pub client: rtpengine::Settings,
    pub media: MediaConfig,
}

/// The instances of `[rtpengine]` as the client takes them.
pub fn instances(raw: &RawRtpengine) -> Vec<InstanceConfig> {
    raw.instances
        .iter()
        .map(|i| match i {
            RawInstance::Socket(s) => InstanceConfig {
                socket: s.clone(),
                set: 0,
                weight: 1,
            },
            RawInstance::Table(t) => InstanceConfig {
                socket: t.socket.clone(),
                set: t.set,
                weight: t.weight,
            },
        })
        .collect()
}

/// Checks both sections.
pub fn validate(
    rtp: Option<&RawRtpengine>,
    media: Option<&RawMedia>,
    errors: &mut Vec<ConfigError>,
) -> Option<MediaSettings> {
    let default_media = RawMedia::default();
    let m = media.unwrap_or(&default_media);
    let relay = Relay::parse(&m.relay);
    if relay.is_none() {
        errors.push(err(
            "media.relay",
            &m.relay,
            "must be \"auto\", \"always\" or \"never\"",
        ));
    }
    for c in &m.sip_codecs {
        if c.is_empty()
            || c.len() > 32
            || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            errors.push(err("media.sip_codecs", c, "not a codec name (like PCMU)"));
        }
    }
    if !(100..=30_000).contains(&m.wait_ms) {
        errors.push(err(
            "media.wait_ms",
            m.wait_ms.to_string(),
            "must be from 100 to 30000",
        ));
    }
    let mut rules = Vec::new();
    for (n, r) in m.rule.iter().enumerate() {
        let key = |k: &str| format!("media.rule[{n}].{k}");
        let mut sources = Vec::new();
        for src in &r.sources {
            match sip_proxy::registrar::parse_cidr(src) {
                Some(net) => sources.push(net),
                None => errors.push(err(
                    key("sources"),
                    src,
                    "not a network (10.0.0.0/8) or an address",
                )),
            }
        }
        if r.sources.is_empty() {
            errors.push(err(key("sources"), "[]", "at least one network is needed"));
        }
        let relay = match r.relay.as_deref().map(|v| (v, Relay::parse(v))) {
            None => None,
            Some((_, Some(x))) => Some(x),
            Some((v, None)) => {
                errors.push(err(
                    key("relay"),
                    v,
                    "must be \"auto\", \"always\" or \"never\"",
                ));
                None
            }
        };
        if relay.is_none() && r.set.is_none() && r.relay.is_none() {
            errors.push(err(key("relay"), "-", "a rule sets relay, set or both"));
        }
        rules.push(sip_proxy::media::MediaRule {
            sources,
            relay,
            set: r.set,
        });
    }
    let Some(rtp) = rtp else {
        if media.is_some_and(|m| m.relay != "never") {
            errors.push(err(
                "media.relay",
                &m.relay,
                "needs an [rtpengine] section with its instances",
            ));
        }
        return None;
    };
    let from_database = match rtp.source.as_str() {
        "config" => false,
        "database" => true,
        other => {
            errors.push(err(
                "rtpengine.source",
                other,
                "must be \"config\" or \"database\" (OpenSIPS' rtpengine table)",
            ));
            false
        }
    };
    let list = instances(rtp);
    if from_database && !list.is_empty() {
        errors.push(err(
            "rtpengine.instances",
            "[...]",
            "with source = \"database\" the instances are the table's rows: leave this out",
        ));
    }
    if list.is_empty() && !from_database {
        errors.push(err(
            "rtpengine.instances",
            "[]",
            "at least one instance is needed, like \"udp:127.0.0.1:2223\"",
        ));
    }
    for i in &list {
        if let Err(e) = rtpengine::client::parse_socket(&i.socket) {
            errors.push(err("rtpengine.instances", &i.socket, &e.why));
        }
    }
    for (n, a) in list.iter().enumerate() {
        if list[..n]
            .iter()
            .any(|b| b.set == a.set && b.socket == a.socket)
        {
            errors.push(err(
                "rtpengine.instances",
                &a.socket,
                "listed twice in its set",
            ));
        }
    }
    if !from_database && (m.set != 0 || !list.is_empty()) && !list.iter().any(|i| i.set == m.set) {
        errors.push(err(
            "media.set",
            m.set.to_string(),
            "no instance of [rtpengine] is in this set",
        ));
    }
    for (n, r) in rules.iter().enumerate() {
        if let Some(set) = r
            .set
            .filter(|s| !from_database && !list.iter().any(|i| i.set == *s))
        {
            errors.push(err(
                format!("media.rule[{n}].set"),
                set.to_string(),
                "no instance of [rtpengine] is in this set",
            ));
        }
    }
    if !(20..=5_000).contains(&rtp.timeout_ms) {
        errors.push(err(
            "rtpengine.timeout_ms",
            rtp.timeout_ms.to_string(),
            "must be from 20 to 5000",
        ));
    }
    if rtp.retries > 10 {
        errors.push(err(
            "rtpengine.retries",
            rtp.retries.to_string(),
            "at most 10",
        ));
    }
    if rtp.ping_interval_s == 0 || rtp.ping_interval_s > 3600 {
        errors.push(err(
            "rtpengine.ping_interval_s",
            rtp.ping_interval_s.to_string(),
            "must be from 1 to 3600",
        ));
    }
    Some(MediaSettings {
        instances: list,
        from_database,
        client: rtpengine::Settings {
            timeout: Duration::from_millis(rtp.timeout_ms),
            retries: rtp.retries,
            ping_interval: Duration::from_secs(rtp.ping_interval_s.max(1)),
        },
        media: MediaConfig {
            relay: relay.unwrap_or(Relay::Auto),
            set: m.set,
            sip_codecs: m.sip_codecs.clone(),
            refuse_on_failure: m.refuse_on_failure,
            wait: Duration::from_millis(m.wait_ms),
            rules,
            ..MediaConfig::default()
        },
    })
}

/// The instances of `rtpengine` rows; what cannot be read is described (the row is skipped).
pub fn instances_from_rows(rows: &[store::RtpengineRow]) -> (Vec<InstanceConfig>, Vec<String>) {
    let mut out: Vec<InstanceConfig> = Vec::new();
    let mut problems = Vec::new();
    for r in rows {
        let Ok(set) = u32::try_from(r.set_id) else {
            problems.push(format!(
                "row {}: set_id {} is not a set number",
                r.id, r.set_id
            ));
            continue;
        };
        if r.socket.len() > 4096 {
            problems.push(format!(
                "row {}: socket is {} bytes long",
                r.id,
                r.socket.len()
            ));
            continue;
        }
        let mut row = Vec::new();
        let mut ok = true;
        for part in r.socket.split_whitespace() {
            let (sock, weight) = match part.rsplit_once('=') {
                Some((s, w)) => match w.parse::<u32>() {
                    Ok(w) if w <= 1_000_000 => (s, w),
                    _ => {
                        problems.push(format!(
                            "row {}: weight {w:?} of {s:?} is not a number up to 1000000",
                            r.id
                        ));
                        ok = false;
                        break;
                    }
                },
                None => (part, 1),
            };
            if let Err(e) = rtpengine::client::parse_socket(sock) {
                problems.push(format!("row {}: {e}", r.id));
                ok = false;
                break;
            }
            if out
                .iter()
                .chain(&row)
                .any(|i: &InstanceConfig| i.set == set && i.socket == sock)
            {
                problems.push(format!("row {}: {sock} is listed twice in set {set}", r.id));
                ok = false;
                break;
            }
            row.push(InstanceConfig {
                socket: sock.to_string(),
                set,
                weight,
            });
        }
        if ok && row.is_empty() {
            problems.push(format!("row {}: no socket", r.id));
        } else if ok {
            out.extend(row);
        }
    }
    (out, problems)
}

/// Runs the core's media commands over NG.
pub struct NgRunner(pub Arc<Client>);

/// The NG dictionary of a media command.
pub fn ng_command(req: &MediaRequest) -> Value {
    let s = |v: &str| Value::from(v);
    let mut d: Vec<(&str, Value)> = vec![
        ("command", s(req.op.as_str())),
        ("call-id", s(&req.call_id)),
    ];
    if !req.from_tag.is_empty() {
        d.push(("from-tag", s(&req.from_tag)));
    }
    if !req.to_tag.is_empty() {
        d.push(("to-tag", s(&req.to_tag)));
    }
    if !req.via_branch.is_empty() {
        d.push(("via-branch", s(&req.via_branch)));
    }
    if req.op != MediaOp::Delete {
        d.push(("sdp", Value::Bytes(req.sdp.to_vec())));
        let f = &req.flags;
        if let Some(v) = f.ice {
            d.push(("ICE", s(v)));
        }
        if let Some(v) = f.dtls {
            d.push(("DTLS", s(v)));
        }
        if let Some(v) = f.transport_protocol {
            d.push(("transport-protocol", s(v)));
        }
        if !f.rtcp_mux.is_empty() {
            d.push(("rtcp-mux", Value::strings(f.rtcp_mux.iter().copied())));
        }
        if !f.sdes.is_empty() {
            d.push(("SDES", Value::strings(f.sdes.iter().copied())));
        }
        if !f.flags.is_empty() {
            d.push(("flags", Value::strings(f.flags.iter().copied())));
        }
        if !f.replace.is_empty() {
            d.push(("replace", Value::strings(f.replace.iter().copied())));
        }
        if !f.transcode.is_empty() {
            d.push((
                "codec",
                Value::dict([(
                    "transcode",
                    Value::strings(f.transcode.iter().map(String::as_str)),
                )]),
            ));
        }
        if let Some(a) = f.received_from {
            let fam = if matches!(a, IpAddr::V4(_)) {
                "IP4"
            } else {
                "IP6"
            };
            d.push((
                "received-from",
                Value::List(vec![s(fam), s(&a.to_string())]),
            ));
        }
    }
    Value::dict(d)
}

impl net::MediaRunner for NgRunner {
    fn start(&self, req: MediaRequest, done: net::MediaDone) {
        let kind = match req.op {
            MediaOp::Offer => Kind::Offer,
            MediaOp::Answer => Kind::Answer,
            MediaOp::Delete => Kind::Delete,
        };
        let cmd = ng_command(&req);
        let delete = req.op == MediaOp::Delete;
        self.0.start(
            kind,
            &req.call_id,
            req.set,
            &cmd,
            Box::new(move |r| {
                done(match r {
                    Ok(_) if delete => Ok(Bytes::new()),
                    Ok((v, instance)) => match v.get("sdp").and_then(Value::as_bytes) {
                        Some(sdp) if sip_proxy::media::inspect(sdp).is_some() => {
                            Ok(Bytes::copy_from_slice(sdp))
                        }
                        _ => Err(MediaError::Unavailable(format!(
                            "{instance} gave no usable SDP"
                        ))),
                    },
                    Err(Failure::Rejected(r)) => Err(MediaError::Refused(r)),
                    Err(e) => Err(MediaError::Unavailable(e.to_string())),
                })
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<crate::config::Config, Vec<crate::config::ConfigError>> {
        crate::config::load(
            &format!(
                "[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n{extra}\n[routing]\ndefault_set = 1\n[dispatcher]\n[[dispatcher.set]]\nid = 1\ndestinations = [\"sip:127.0.0.1:5080\"]\n"
            ),
            1,
        )
    }

    fn errs(extra: &str) -> String {
        load(extra)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn instances_in_both_forms_and_the_policy_load() {
        let c = load("[rtpengine]\ninstances = [\"udp:127.0.0.1:2223\", { socket = \"udp:127.0.0.1:2225\", set = 1, weight = 0 }]\n[media]\nrelay = \"always\"\nset = 1\n").unwrap();
        let m = c.media.unwrap();
        assert_eq!(m.instances.len(), 2);
        assert_eq!(m.instances[1].weight, 0);
        assert_eq!(m.media.relay, Relay::Always);
        assert_eq!(m.media.set, 1);
        assert!(load("").unwrap().media.is_none());
        let c = load("[rtpengine]\ninstances = [\"udp:127.0.0.1:2223\", { socket = \"udp:127.0.0.1:2225\", set = 2 }]\n[[media.rule]]\nsources = [\"10.0.0.0/8\", \"192.0.2.7\"]\nrelay = \"never\"\n[[media.rule]]\nsources = [\"203.0.113.0/24\"]\nset = 2\n").unwrap();
        let m = c.media.unwrap().media;
        assert_eq!(
            m.for_source("192.0.2.7".parse().unwrap()),
            (Relay::Never, 0)
        );
        assert_eq!(
            m.for_source("203.0.113.9".parse().unwrap()),
            (Relay::Auto, 2)
        );
    }

    #[test]
    fn bad_sections_are_refused_by_key() {
        let e = errs("[rtpengine]\ninstances = [\"udp:rtp.example.com:2223\", \"tcp:127.0.0.1:1\"]\ntimeout_ms = 0\n");
        assert!(e.contains("rtpengine.instances"), "{e}");
        assert!(e.contains("IP address"), "{e}");
        assert!(e.contains("only the UDP"), "{e}");
        assert!(e.contains("rtpengine.timeout_ms"), "{e}");
        let e = errs("[rtpengine]\ninstances = []\n");
        assert!(e.contains("at least one instance"), "{e}");
        let e = errs("[media]\nrelay = \"always\"\n");
        assert!(e.contains("needs an [rtpengine] section"), "{e}");
        let e = errs("[rtpengine]\ninstances = [\"udp:127.0.0.1:2223\"]\n[media]\nrelay = \"sometimes\"\nset = 4\nsip_codecs = [\"PC MU\"]\n");
        assert!(e.contains("media.relay"), "{e}");
        assert!(e.contains("media.set"), "{e}");
        assert!(e.contains("media.sip_codecs"), "{e}");
        let e = errs("[rtpengine]\ninstances = [\"udp:127.0.0.1:2223\"]\n[[media.rule]]\nsources = [\"10.0.0.0/33\"]\nrelay = \"maybe\"\nset = 7\n[[media.rule]]\nsources = []\n");
        assert!(e.contains("media.rule[0].sources"), "{e}");
        assert!(e.contains("media.rule[0].relay"), "{e}");
        assert!(e.contains("media.rule[0].set"), "{e}");
        assert!(e.contains("media.rule[1].sources"), "{e}");
        assert!(e.contains("a rule sets relay, set or both"), "{e}");
        let e = errs("[rtpengine]\ninstances = [{ socket = \"udp:127.0.0.1:2223\", weight = 1, colour = 2 }]\n");
        assert!(e.contains("rtpengine"), "{e}");
        assert!(load("[media]\nrelay = \"never\"\n").is_ok());
    }

    #[test]
    fn table_rows_in_opensips_form_and_hostile_ones_skipped() {
        let row = |id, socket: &str, set_id| store::RtpengineRow {
            id,
            socket: socket.into(),
            set_id,
        };
        let (list, problems) = instances_from_rows(&[
            row(1, "udp:127.0.0.1:2223=2 udp:127.0.0.1:2225", 0),
            row(2, "udp:10.0.0.7:2223", 1),
            row(3, "udp:rtp.example.com:2223", 0),
            row(4, "udp:127.0.0.1:2227=-1", 0),
            row(5, "udp:127.0.0.1:2229", -3),
            row(6, "   ", 0),
            row(7, "udp:127.0.0.1:2223", 0),
            row(8, &"x".repeat(5000), 0),
            row(9, "udp:127.0.0.1:2231=1 tcp:127.0.0.1:1", 2),
        ]);
        let got: Vec<(String, u32, u32)> = list
            .iter()
            .map(|i| (i.socket.clone(), i.set, i.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("udp:127.0.0.1:2223".to_string(), 0, 2),
                ("udp:127.0.0.1:2225".to_string(), 0, 1),
                ("udp:10.0.0.7:2223".to_string(), 1, 1)
            ]
        );
        let all = problems.join("\n");
        for n in 3..=9 {
            assert!(all.contains(&format!("row {n}:")), "{all}");
        }
        // a row is taken whole or not at all
        assert!(!got.iter().any(|g| g.0.contains("2231")));
        let c =
            load("[database]\nurl = \"sqlite:///tmp/x.db\"\n[rtpengine]\nsource = \"database\"\n")
                .unwrap();
        assert!(c.media.unwrap().from_database);
        let e = errs("[rtpengine]\nsource = \"database\"\ninstances = [\"udp:127.0.0.1:1\"]\n");
        assert!(e.contains("leave this out"), "{e}");
        let e = errs("[rtpengine]\nsource = \"ldap\"\n");
        assert!(e.contains("rtpengine.source"), "{e}");
    }

    #[test]
    fn commands_carry_the_flags() {
        let req = MediaRequest {
            op: MediaOp::Offer,
            call_id: "c1".into(),
            from_tag: "f".into(),
            to_tag: String::new(),
            via_branch: String::new(),
            sdp: Bytes::from_static(b"v=0\r\n"),
            flags: sip_proxy::media::Flags {
                ice: Some("force"),
                transcode: vec!["PCMU".into()],
                received_from: Some("192.0.2.1".parse().unwrap()),
                rtcp_mux: vec!["offer"],
                ..Default::default()
            },
            set: 0,
        };
        let v = ng_command(&req);
        let text = String::from_utf8(v.to_bytes()).unwrap();
        assert!(text.contains("3:ICE5:force"), "{text}");
        assert!(text.contains("5:codecd9:transcodel4:PCMUee"), "{text}");
        assert!(
            text.contains("13:received-froml3:IP49:192.0.2.1e"),
            "{text}"
        );
        assert!(text.contains("8:rtcp-muxl5:offere"), "{text}");
        assert!(!text.contains("to-tag"), "{text}");
        let del = ng_command(&MediaRequest {
            op: MediaOp::Delete,
            ..req
        });
        let text = String::from_utf8(del.to_bytes()).unwrap();
        assert!(!text.contains("sdp"), "{text}");
        assert!(text.contains("6:delete"), "{text}");
    }
}

//! Media decisions, sans-IO: whether a call's media goes through the relay (rtpengine), and
//! the flags of each offer and answer, chosen from what the proxy knows of both legs: their
//! transports (a WebSocket leg is a browser), their SDPs (WebRTC-shaped or plain RTP, the
//! codecs, a private address behind NAT) and where the messages came from. This replaces
//! the flag matrix OpenSIPS and Kamailio scripts write by hand (seed 000).
//!
//! The core asks the relay through commands ([`crate::command::CommandKind::Media`]); the
//! driver speaks the NG protocol.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::types::Transport;

/// When media goes through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// When a leg needs it: either is WebRTC, a party is behind NAT.
    Auto,
    /// Every call with an SDP.
    Always,
    /// None (the relay is not asked, even when configured).
    Never,
}

impl Relay {
    pub fn parse(s: &str) -> Option<Relay> {
        Some(match s {
            "auto" => Relay::Auto,
            "always" => Relay::Always,
            "never" => Relay::Never,
            _ => return None,
        })
    }
}

/// An override of the policy for calls from some networks (`[[media.rule]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRule {
    /// The networks the call comes from (`10.0.0.0/8`).
    pub sources: Vec<(IpAddr, u8)>,
    /// Its relay policy (`None`: the section's).
    pub relay: Option<Relay>,
    /// Its rtpengine set (`None`: the section's).
    pub set: Option<u32>,
}

/// `[media]` settings.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub relay: Relay,
    /// The rtpengine set of new calls.
    pub set: u32,
    /// Codecs the plain-SIP side (FreeSWITCH) takes: an offer from a WebRTC leg to a SIP
    /// leg that has none of them gets them added, and rtpengine transcodes.
    pub sip_codecs: Vec<String>,
    /// A failed offer refuses the call (`503`); off: the call goes on unrelayed where it
    /// can (never between a WebRTC and a SIP leg).
    pub refuse_on_failure: bool,
    /// How long a request or reply waits for the relay's answer.
    pub wait: Duration,
    /// Parked requests and replies at most; more are refused with `503`.
    pub max_waiting: usize,
    /// Overrides per source network, the first that holds the source applies.
    pub rules: Vec<MediaRule>,
}

impl MediaConfig {
    /// The relay policy and rtpengine set of a call from `source`.
    pub fn for_source(&self, source: IpAddr) -> (Relay, u32) {
        let rule = self.rules.iter().find(|r| {
            r.sources
                .iter()
                .any(|n| crate::registrar::in_cidr(source, *n))
        });
        (
            rule.and_then(|r| r.relay).unwrap_or(self.relay),
            rule.and_then(|r| r.set).unwrap_or(self.set),
        )
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            relay: Relay::Auto,
            set: 0,
            sip_codecs: vec!["PCMU".into(), "PCMA".into()],
            refuse_on_failure: true,
            wait: Duration::from_secs(2),
            max_waiting: 10_000,
            rules: Vec::new(),
        }
    }
}

/// What an SDP body says, as far as the flags need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpInfo {
    /// An `m=` line with a DTLS-SRTP profile (`UDP/TLS/RTP/SAVPF`) or a fingerprint.
    pub webrtc: bool,
    /// The session (or first media) connection address.
    pub addr: Option<IpAddr>,
    /// Codec names (upper case) of every `m=` line.
    pub codecs: Vec<String>,
    /// Media lines.
    pub media: usize,
}

/// Reads the parts of an SDP the decisions need. `None`: not an SDP (no `v=0`, no `m=`
/// line, a line that is not `x=...`, or not text).
pub fn inspect(body: &[u8]) -> Option<SdpInfo> {
    let text = std::str::from_utf8(body).ok()?;
    let mut info = SdpInfo::default();
    let mut seen_v = false;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=')?;
        if k.len() != 1 {
            return None;
        }
        match k {
            "v" => seen_v = v.trim() == "0",
            "c" => {
                // c=IN IP4 192.0.2.1 (the session's, or the first media line's)
                let addr = v.split_whitespace().nth(2)?;
                let addr = addr.split('/').next()?;
                if info.addr.is_none() {
                    info.addr = addr.parse().ok();
                }
            }
            "m" => {
                let mut it = v.split_whitespace();
                let (_media, _port, proto) = (it.next()?, it.next()?, it.next()?);
                info.media += 1;
                if proto.contains("TLS/RTP/SAVP") {
                    info.webrtc = true;
                }
                for pt in it {
                    let name = match pt {
                        "0" => "PCMU",
                        "8" => "PCMA",
                        "9" => "G722",
                        "18" => "G729",
                        _ => continue,
                    };
                    info.codecs.push(name.to_string());
                }
            }
            "a" => {
                if v.starts_with("fingerprint:") {
                    info.webrtc = true;
                } else if let Some(r) = v.strip_prefix("rtpmap:") {
                    if let Some(name) = r
                        .split_whitespace()
                        .nth(1)
                        .and_then(|n| n.split('/').next())
                    {
                        let n = name.to_ascii_uppercase();
                        if !info.codecs.contains(&n) {
                            info.codecs.push(n);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (seen_v && info.media > 0).then_some(info)
}

/// True when a message's body is an SDP the relay should see (`application/sdp`, not
/// empty).
pub fn has_sdp(content_type: Option<&str>, body: &[u8]) -> bool {
    !body.is_empty()
        && content_type.is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
        })
}

/// Private, shared or loopback-free addresses that mean "behind NAT" in an SDP sent from a
/// public address.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) || v4.is_link_local()
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// The kind of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Sip,
    WebRtc,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Sip => "sip",
            Leg::WebRtc => "webrtc",
        }
    }
}

/// The leg a transport and (when known) an SDP make: a WebSocket or a DTLS-SRTP SDP is a
/// browser.
pub fn leg_of(t: Transport, sdp: Option<&SdpInfo>) -> Leg {
    if matches!(t, Transport::Ws | Transport::Wss) || sdp.is_some_and(|s| s.webrtc) {
        Leg::WebRtc
    } else {
        Leg::Sip
    }
}

/// True when the sender of an SDP is behind NAT: its SDP names a private address and the
/// message came from another one.
pub fn behind_nat(sdp: &SdpInfo, source: IpAddr) -> bool {
    sdp.addr
        .is_some_and(|a| a != source && is_private(a) && !source.is_loopback())
}

/// The rtpengine flags of one offer or answer (the NG dictionary's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `ICE`: force or remove.
    pub ice: Option<&'static str>,
    /// `DTLS`: passive or off.
    pub dtls: Option<&'static str>,
    /// `transport-protocol`.
    pub transport_protocol: Option<&'static str>,
    /// `rtcp-mux`: offer, require, demux.
    pub rtcp_mux: Vec<&'static str>,
    /// `SDES`: off.
    pub sdes: Vec<&'static str>,
    /// `flags`: generate-mid, trust-address, ...
    pub flags: Vec<&'static str>,
    /// `replace`: origin, session-connection.
    pub replace: Vec<&'static str>,
    /// `codec: { transcode: [...] }`.
    pub transcode: Vec<String>,
    /// `received-from`: the address the message came from (a sender behind NAT).
    pub received_from: Option<IpAddr>,
}

impl Flags {
    /// Where the relay should send this side's media: the SDP's address when the sender
    /// is where it says, else the address the message came from.
    fn source(&mut self, sdp: &SdpInfo, source: IpAddr) {
        if sdp.addr == Some(source) || !behind_nat(sdp, source) {
            self.flags.push("trust-address");
        } else {
            self.received_from = Some(source);
        }
    }

    /// A one-line summary for logs and tests: `ICE=force DTLS=passive ...`.
    pub fn describe(&self) -> String {
        let mut v: Vec<String> = Vec::new();
        if let Some(i) = self.ice {
            v.push(format!("ICE={i}"));
        }
        if let Some(d) = self.dtls {
            v.push(format!("DTLS={d}"));
        }
        if let Some(t) = self.transport_protocol {
            v.push(t.to_string());
        }
        v.extend(self.rtcp_mux.iter().map(|m| format!("rtcp-mux-{m}")));
        v.extend(self.sdes.iter().map(|m| format!("SDES-{m}")));
        v.extend(self.flags.iter().map(|f| f.to_string()));
        v.extend(self.replace.iter().map(|r| format!("replace-{r}")));
        if !self.transcode.is_empty() {
            v.push(format!("transcode={}", self.transcode.join(",")));
        }
        if let Some(a) = self.received_from {
            v.push(format!("received-from={a}"));
        }
        v.join(" ")
    }
}

/// The flags of an offer from leg `from` (its SDP `sdp`, sent from `source`) to leg `to`,
/// and of the answer that will come back (its source added then: [`answer_source`]).
pub fn offer_flags(
    cfg: &MediaConfig,
    from: Leg,
    sdp: &SdpInfo,
    source: IpAddr,
    to: Leg,
) -> (Flags, Flags) {
    let mut offer = Flags {
        replace: vec!["origin", "session-connection"],
        ..Flags::default()
    };
    offer.source(sdp, source);
    match (from, to) {
        (Leg::WebRtc, Leg::Sip) => {
            offer.ice = Some("remove");
            offer.dtls = Some("off");
            offer.transport_protocol = Some("RTP/AVP");
            offer.rtcp_mux = vec!["demux"];
            offer.sdes = vec!["off"];
            // a browser that offers no codec the SIP side takes: add them, transcode
            if !cfg.sip_codecs.is_empty()
                && !sdp
                    .codecs
                    .iter()
                    .any(|c| cfg.sip_codecs.iter().any(|s| s.eq_ignore_ascii_case(c)))
            {
                offer.transcode = cfg.sip_codecs.clone();
            }
        }
        (Leg::Sip, Leg::WebRtc) => {
            offer.ice = Some("force");
            offer.dtls = Some("passive");
            offer.transport_protocol = Some("UDP/TLS/RTP/SAVPF");
            offer.rtcp_mux = vec!["offer"];
            offer.sdes = vec!["off"];
            offer.flags.push("generate-mid");
        }
        (Leg::WebRtc, Leg::WebRtc) => {
            offer.ice = Some("force");
            offer.dtls = Some("passive");
            offer.transport_protocol = Some("UDP/TLS/RTP/SAVPF");
            offer.rtcp_mux = vec!["require"];
            offer.sdes = vec!["off"];
            offer.flags.push("generate-mid");
        }
        (Leg::Sip, Leg::Sip) => {
            offer.transport_protocol = Some("RTP/AVP");
        }
    }
    (offer, answer_flags(from, to))
}

/// The flags of the answer to an offer from leg `offerer`, coming from leg `answerer` (its
/// source added by [`answer_source`]).
pub fn answer_flags(offerer: Leg, answerer: Leg) -> Flags {
    let mut answer = Flags {
        replace: vec!["origin", "session-connection"],
        ..Flags::default()
    };
    match (offerer, answerer) {
        (Leg::WebRtc, Leg::Sip) => {
            answer.ice = Some("force");
            answer.transport_protocol = Some("UDP/TLS/RTP/SAVPF");
            answer.rtcp_mux = vec!["require"];
            answer.flags.push("generate-mid");
        }
        (Leg::Sip, Leg::WebRtc) => {
            answer.ice = Some("remove");
            answer.transport_protocol = Some("RTP/AVP");
            answer.rtcp_mux = vec!["demux"];
        }
        (Leg::WebRtc, Leg::WebRtc) => {
            answer.ice = Some("force");
            answer.transport_protocol = Some("UDP/TLS/RTP/SAVPF");
            answer.rtcp_mux = vec!["require"];
            answer.sdes = vec!["off"];
            answer.flags.push("generate-mid");
        }
        (Leg::Sip, Leg::Sip) => answer.transport_protocol = Some("RTP/AVP"),
    }
    answer
}

/// Completes an answer's flags with where the answer came from.
pub fn answer_source(flags: &mut Flags, sdp: Option<&SdpInfo>, source: IpAddr) {
    match sdp {
        Some(s) => flags.source(s, source),
        None => flags.flags.push("trust-address"),
    }
}

/// True when this call's media must go through the relay under policy `relay`.
pub fn must_relay(
    relay: Relay,
    from: Leg,
    sdp: &SdpInfo,
    source: IpAddr,
    to: Leg,
    to_nat: bool,
) -> bool {
    match relay {
        Relay::Never => false,
        Relay::Always => true,
        Relay::Auto => from != to || from == Leg::WebRtc || behind_nat(sdp, source) || to_nat,
    }
}

/// True when the call cannot work without the relay (a browser and a plain-RTP phone).
pub fn relay_required(from: Leg, to: Leg) -> bool {
    from != to
}

/// What a media command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaOp {
    Offer,
    Answer,
    Delete,
}

impl MediaOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaOp::Offer => "offer",
            MediaOp::Answer => "answer",
            MediaOp::Delete => "delete",
        }
    }
}

/// One question to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRequest {
    pub op: MediaOp,
    pub call_id: String,
    /// The offerer's tag (rtpengine's `from-tag`).
    pub from_tag: String,
    /// The answerer's tag (rtpengine's `to-tag`; empty in an initial offer).
    pub to_tag: String,
    /// Which forked branch (rtpengine's `via-branch`; empty: none).
    pub via_branch: String,
    pub sdp: Bytes,
    pub flags: Flags,
    /// The rtpengine set (a new call's).
    pub set: u32,
}

/// Why the relay gave no SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaError {
    /// The relay refused (its reason): the SDP is at fault → `488`.
    Refused(String),
    /// No relay answered (its reason) → `503`.
    Unavailable(String),
}

impl std::fmt::Display for MediaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaError::Refused(r) => write!(f, "media relay refused the SDP: {r}"),
            MediaError::Unavailable(r) => write!(f, "media relay unavailable: {r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROWSER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=fingerprint:sha-256 AA:BB\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n";
    const OPUS_ONLY: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n";
    const PHONE_NAT: &str = "v=0\r\no=- 1 2 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sdps_are_read_and_non_sdps_refused() {
        let b = inspect(BROWSER.as_bytes()).unwrap();
        assert!(b.webrtc);
        assert_eq!(b.codecs, ["PCMU", "PCMA", "OPUS"]);
        let p = inspect(PHONE_NAT.as_bytes()).unwrap();
        assert!(!p.webrtc);
        assert_eq!(p.addr, Some(ip("192.168.1.20")));
        assert_eq!(p.codecs, ["PCMU", "PCMA", "TELEPHONE-EVENT"]);
        for bad in [
            &b""[..],
            b"hello",
            b"v=0\r\n",                                // no media
            b"v=0\r\nm=audio\r\n",                     // short m= line
            b"v=0\r\nm=audio 1 RTP/AVP 0\r\nxx=1\r\n", // key of two letters
            b"v=0\r\nm=audio 1 RTP/AVP 0\r\nc=IN\r\n", // short c= line
            b"\xff\xfe",
            b"m=audio 1 RTP/AVP 0\r\n", // no v=0
        ] {
            assert!(inspect(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_types_are_matched_exactly() {
        assert!(has_sdp(Some("application/sdp"), b"v=0"));
        assert!(has_sdp(Some("Application/SDP; charset=x"), b"v=0"));
        assert!(!has_sdp(Some("application/sdp"), b""));
        assert!(!has_sdp(Some("multipart/mixed;boundary=x"), b"v=0"));
        assert!(!has_sdp(None, b"v=0"));
    }

    #[test]
    fn the_flag_matrix_follows_the_legs() {
        let cfg = MediaConfig::default();
        let b = inspect(BROWSER.as_bytes()).unwrap();
        let (o, a) = offer_flags(&cfg, Leg::WebRtc, &b, ip("127.0.0.1"), Leg::Sip);
        assert_eq!(
            o.describe(),
            "ICE=remove DTLS=off RTP/AVP rtcp-mux-demux SDES-off trust-address replace-origin replace-session-connection"
        );
        assert_eq!(
            a.describe(),
            "ICE=force UDP/TLS/RTP/SAVPF rtcp-mux-require generate-mid replace-origin replace-session-connection"
        );
        let p = inspect(PHONE_NAT.as_bytes()).unwrap();
        let (o, a) = offer_flags(&cfg, Leg::Sip, &p, ip("203.0.113.5"), Leg::WebRtc);
        assert_eq!(
            o.describe(),
            "ICE=force DTLS=passive UDP/TLS/RTP/SAVPF rtcp-mux-offer SDES-off generate-mid replace-origin replace-session-connection received-from=203.0.113.5"
        );
        assert_eq!(
            a.describe(),
            "ICE=remove RTP/AVP rtcp-mux-demux replace-origin replace-session-connection"
        );
        // an Opus-only browser to FreeSWITCH: PCMU/PCMA added, transcoded
        let opus = inspect(OPUS_ONLY.as_bytes()).unwrap();
        let (o, _) = offer_flags(&cfg, Leg::WebRtc, &opus, ip("127.0.0.1"), Leg::Sip);
        assert_eq!(o.transcode, ["PCMU", "PCMA"]);
        let (o, _) = offer_flags(&cfg, Leg::WebRtc, &b, ip("127.0.0.1"), Leg::Sip);
        assert!(o.transcode.is_empty());
    }

    #[test]
    fn auto_relays_browsers_and_nat_only() {
        let cfg = MediaConfig::default().relay;
        let p = inspect(PHONE_NAT.as_bytes()).unwrap();
        let public = "v=0\r\nc=IN IP4 203.0.113.5\r\nm=audio 4000 RTP/AVP 0\r\n";
        let public = inspect(public.as_bytes()).unwrap();
        let src = ip("203.0.113.5");
        assert!(must_relay(cfg, Leg::Sip, &p, src, Leg::Sip, false));
        assert!(!must_relay(cfg, Leg::Sip, &public, src, Leg::Sip, false));
        assert!(must_relay(cfg, Leg::Sip, &public, src, Leg::Sip, true));
        assert!(must_relay(cfg, Leg::Sip, &public, src, Leg::WebRtc, false));
        // the same private address as the source: on the same network, no NAT
        let lan = ip("192.168.1.20");
        assert!(!must_relay(cfg, Leg::Sip, &p, lan, Leg::Sip, false));
        assert!(!must_relay(
            Relay::Never,
            Leg::WebRtc,
            &p,
            src,
            Leg::Sip,
            true
        ));
        assert!(must_relay(
            Relay::Always,
            Leg::Sip,
            &public,
            src,
            Leg::Sip,
            false
        ));
        assert_eq!(leg_of(Transport::Wss, None), Leg::WebRtc);
        assert_eq!(leg_of(Transport::Udp, Some(&p)), Leg::Sip);
    }

    #[test]
    fn rules_override_the_policy_by_source_first_match_wins() {
        let net = |s| crate::registrar::parse_cidr(s).unwrap();
        let cfg = MediaConfig {
            rules: vec![
                MediaRule {
                    sources: vec![net("10.1.0.0/16")],
                    relay: Some(Relay::Never),
                    set: None,
                },
                MediaRule {
                    sources: vec![net("10.0.0.0/8"), net("2001:db8::/32")],
                    relay: None,
                    set: Some(2),
                },
            ],
            ..MediaConfig::default()
        };
        assert_eq!(cfg.for_source(ip("10.1.2.3")), (Relay::Never, 0));
        assert_eq!(cfg.for_source(ip("10.9.2.3")), (Relay::Auto, 2));
        assert_eq!(cfg.for_source(ip("2001:db8::7")), (Relay::Auto, 2));
        assert_eq!(cfg.for_source(ip("192.0.2.1")), (Relay::Auto, 0));
    }
}

//! Live load from FreeSWITCH's event socket (ESL) for `fs://` balancer resources: one
//! connection per node and resource, authenticated by password, subscribed to `HEARTBEAT`
//! events (`Max-Sessions`, `Session-Count`, `Idle-CPU`), each report handed to the balancer.
//! A lost connection is retried every 5 s; the node keeps its last report meanwhile.
//!
//! The framing is ESL's: a block of `Name: value` lines ended by an empty line, followed by
//! `Content-Length` bytes of body when that header is present. An event in `plain` format
//! is such a body, its values URL-encoded.

use std::sync::Arc;
use std::time::Duration;

use sip_proxy::balancer::{Balancer, FsSource, LiveReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest header block or body accepted (a HEARTBEAT is about 1.5 KB).
const MAX_FRAME: usize = 256 * 1024;

/// One ESL frame: its headers and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Frame {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why the stream is unusable (the connection is dropped and retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EslError {
    BadHeader(String),
    BadLength(String),
    TooLarge,
    NotText,
}

impl std::fmt::Display for EslError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EslError::BadHeader(l) => write!(f, "header line {l:?} has no colon"),
            EslError::BadLength(v) => write!(f, "Content-Length {v:?} is not a number"),
            EslError::TooLarge => write!(f, "frame larger than {MAX_FRAME} bytes"),
            EslError::NotText => write!(f, "frame is not UTF-8"),
        }
    }
}

/// Takes the next whole frame off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn next_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, EslError> {
    // stray empty lines between frames
    let lead = buf.iter().take_while(|b| **b == b'\n').count();
    buf.drain(..lead);
    let Some(end) = buf.windows(2).position(|w| w == b"\n\n") else {
        return if buf.len() > MAX_FRAME {
            Err(EslError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| EslError::NotText)?;
    let headers = parse_lines(head, false)?;
    let len = match headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
    {
        Some((_, v)) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| EslError::BadLength(v.clone()))?,
        None => 0,
    };
    if len > MAX_FRAME {
        return Err(EslError::TooLarge);
    }
    let total = end + 2 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = std::str::from_utf8(&buf[end + 2..total])
        .map_err(|_| EslError::NotText)?
        .to_string();
    buf.drain(..total);
    Ok(Some(Frame { headers, body }))
}

/// `Name: value` lines; `decode` URL-decodes values (event bodies).
fn parse_lines(text: &str, decode: bool) -> Result<Vec<(String, String)>, EslError> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| EslError::BadHeader(l.chars().take(80).collect()))?;
            let v = v.trim();
            Ok((
                n.trim().to_string(),
                if decode { url_decode(v) } else { v.to_string() },
            ))
        })
        .collect()
}

/// `%XX` and `+` decoding (a bad escape is kept as it is).
pub fn url_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The load figures of a `text/event-plain` HEARTBEAT frame. `Ok(None)` for another event;
/// an error names the missing or malformed field.
pub fn heartbeat(f: &Frame) -> Result<Option<LiveReport>, String> {
    if !f
        .get("Content-Type")
        .is_some_and(|t| t.eq_ignore_ascii_case("text/event-plain"))
    {
        return Ok(None);
    }
    let ev = parse_lines(&f.body, true).map_err(|e| e.to_string())?;
    let get = |n: &str| {
        ev.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    if get("Event-Name") != Some("HEARTBEAT") {
        return Ok(None);
    }
    let int = |n: &str| -> Result<i64, String> {
        let v = get(n).ok_or_else(|| format!("HEARTBEAT without {n}"))?;
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|x| *x >= 0)
            .ok_or_else(|| format!("HEARTBEAT {n}: {v:?} is not a count"))
    };
    let idle = get("Idle-CPU").ok_or("HEARTBEAT without Idle-CPU")?;
    let idle_cpu: f64 = idle
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && (0.0..=100.0).contains(x))
        .ok_or_else(|| format!("HEARTBEAT Idle-CPU: {idle:?} is not a percentage"))?;
    Ok(Some(LiveReport {
        max_sessions: int("Max-Sessions")?,
        sessions: int("Session-Count")?,
        idle_cpu,
    }))
}

/// Keeps one reader per live resource of the balancer's nodes, also for nodes added by
/// `lb_reload` (checked every 5 s). A reader ends when its node or resource is gone.
pub fn supervise(balancer: Arc<Balancer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let running = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        loop {
            for n in balancer.nodes().iter() {
                for (res, src) in &n.cfg.live {
                    let key = (n.cfg.uri.to_string(), res.clone(), src.clone());
                    let fresh = running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone());
                    if fresh {
                        let (b, r) = (balancer.clone(), running.clone());
                        tokio::spawn(async move {
                            read_node(&b, &key.0, &key.1, &key.2).await;
                            r.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// Connects, reads reports and reconnects until the node or resource is gone.
async fn read_node(b: &Balancer, uri: &str, res: &str, src: &FsSource) {
    let mut last_error = String::new();
    loop {
        match session(b, uri, res, src).await {
            Ok(()) => return, // the node is gone
            Err(e) => {
                if e != last_error {
                    tracing::warn!(node = uri, resource = res, source = %src, error = %e, "FreeSWITCH event socket: retrying every 5 s");
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !b.nodes().iter().any(|n| &*n.cfg.uri == uri) {
            return;
        }
    }
}

/// One connection: auth, subscribe, then reports until an error (or `Ok` when the node or
/// resource no longer exists).
async fn session(b: &Balancer, uri: &str, res: &str, src: &FsSource) -> Result<(), String> {
    let addr = (src.host.as_str(), src.port);
    let mut s = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut buf = Vec::new();
    let hello = read_frame(&mut s, &mut buf, Duration::from_secs(5)).await?;
    if hello.get("Content-Type") != Some("auth/request") {
        return Err(format!(
            "expected auth/request, got {:?}",
            hello.get("Content-Type")
        ));
    }
    command(&mut s, &mut buf, &format!("auth {}", src.password))
        .await
        .map_err(|e| format!("auth refused: {e}"))?;
    command(&mut s, &mut buf, "event plain HEARTBEAT").await?;
    tracing::info!(node = uri, resource = res, source = %src, "FreeSWITCH event socket: subscribed to HEARTBEAT");
    loop {
        // FreeSWITCH beats every 20 s by default; three missed beats end the connection
        let f = read_frame(&mut s, &mut buf, Duration::from_secs(65)).await?;
        if f.get("Content-Type") == Some("text/disconnect-notice") {
            return Err("disconnected by FreeSWITCH".into());
        }
        match heartbeat(&f) {
            Ok(Some(r)) => {
                if !b.report_live(uri, res, r) {
                    return Ok(());
                }
                tracing::debug!(
                    node = uri,
                    max = r.max_sessions,
                    sessions = r.sessions,
                    idle_cpu = r.idle_cpu,
                    "FreeSWITCH load"
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(node = uri, source = %src, error = %e, "FreeSWITCH event ignored")
            }
        }
    }
}

/// Sends a command and expects `Reply-Text: +OK...`.
async fn command(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    cmd: &str,
) -> Result<(), String> {
    s.write_all(format!("{cmd}\n\n").as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        let f = read_frame(s, buf, Duration::from_secs(5)).await?;
        if f.get("Content-Type") != Some("command/reply") {
            continue; // an event already on its way
        }
        let reply = f.get("Reply-Text").unwrap_or("");
        return if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(format!(
                "{:?} answered {reply:?}",
                cmd.split(' ').next().unwrap_or("")
            ))
        };
    }
}

async fn read_frame(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> Result<Frame, String> {
    loop {
        if let Some(f) = next_frame(buf).map_err(|e| e.to_string())? {
            return Ok(f);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(wait, s.read(&mut chunk))
            .await
            .map_err(|_| format!("nothing received for {} s", wait.as_secs()))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: &str = "Event-Name: HEARTBEAT\nCore-UUID: 1\nSession-Count: 20\nMax-Sessions: 1000\nIdle-CPU: 97.500000\nEvent-Info: System%20Ready\n";

    fn event(body: &str) -> Vec<u8> {
        format!(
            "Content-Length: {}\nContent-Type: text/event-plain\n\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn frames_split_across_reads_and_back_to_back() {
        let mut all = b"Content-Type: auth/request\n\n".to_vec();
        all.extend(event(BEAT));
        all.extend(b"\nContent-Type: command/reply\nReply-Text: +OK accepted\n\n");
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for chunk in all.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(f) = next_frame(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].get("content-type"), Some("auth/request"));
        assert_eq!(
            heartbeat(&frames[1]).unwrap(),
            Some(LiveReport {
                max_sessions: 1000,
                sessions: 20,
                idle_cpu: 97.5
            })
        );
        assert_eq!(frames[2].get("Reply-Text"), Some("+OK accepted"));
        assert!(buf.is_empty());
        assert_eq!(url_decode("System%20Ready+now%2"), "System Ready now%2");
    }

    #[test]
    fn malformed_frames_and_events_are_refused_by_name() {
        let mut b = b"no colon here\n\n".to_vec();
        assert!(matches!(next_frame(&mut b), Err(EslError::BadHeader(_))));
        let mut b = b"Content-Length: lots\n\n".to_vec();
        assert!(matches!(next_frame(&mut b), Err(EslError::BadLength(_))));
        let mut b = b"Content-Length: 999999999\n\n".to_vec();
        assert_eq!(next_frame(&mut b), Err(EslError::TooLarge));
        let mut b = vec![b'x'; MAX_FRAME + 1];
        assert_eq!(next_frame(&mut b), Err(EslError::TooLarge));
        let mut b = b"Content-Type: x\xff\n\n".to_vec();
        assert_eq!(next_frame(&mut b), Err(EslError::NotText));
        let mut b = b"Content-Length: 10\n\nshort".to_vec();
        assert_eq!(next_frame(&mut b), Ok(None), "waits for the body");
        for (body, want) in [
            (
                "Event-Name: HEARTBEAT\nMax-Sessions: 10\nIdle-CPU: 50\n",
                "Session-Count",
            ),
            (
                "Event-Name: HEARTBEAT\nSession-Count: x\nMax-Sessions: 10\nIdle-CPU: 50\n",
                "not a count",
            ),
            (
                "Event-Name: HEARTBEAT\nSession-Count: -1\nMax-Sessions: 10\nIdle-CPU: 50\n",
                "not a count",
            ),
            (
                "Event-Name: HEARTBEAT\nSession-Count: 1\nMax-Sessions: 10\nIdle-CPU: 150\n",
                "percentage",
            ),
            (
                "Event-Name: HEARTBEAT\nSession-Count: 1\nMax-Sessions: 10\n",
                "Idle-CPU",
            ),
        ] {
            let mut b = event(body);
            let f = next_frame(&mut b).unwrap().unwrap();
            let e = heartbeat(&f).unwrap_err();
            assert!(e.contains(want), "{body:?}: {e}");
        }
        let mut b = event("Event-Name: CHANNEL_CREATE\n");
        assert_eq!(heartbeat(&next_frame(&mut b).unwrap().unwrap()), Ok(None));
    }
}

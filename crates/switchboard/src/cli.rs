//! `switchboard dispatcher ...`: talks JSON-RPC to a running instance, and converts Kamailio
//! `dispatcher.list` files to configuration.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::config::parse_destination;

#[derive(Subcommand)]
pub enum DispatcherCmd {
    /// List sets, destinations, their state, calls and probe RTT.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a destination to a set of the running instance.
    Add {
        #[arg(long)]
        set: i64,
        #[arg(long)]
        uri: String,
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        weight: i64,
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i64,
        #[arg(long, default_value = "")]
        attrs: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Remove a destination from a set of the running instance.
    Remove {
        #[arg(long)]
        set: i64,
        #[arg(long)]
        uri: String,
    },
    /// Set a destination's state: active, inactive, probing, disabled, draining.
    SetState {
        #[arg(long)]
        set: i64,
        #[arg(long)]
        uri: String,
        state: String,
    },
    /// Reload the sets from the configuration file.
    Reload {
        /// Start every destination afresh instead of keeping the live state.
        #[arg(long)]
        no_inherit: bool,
    },
    /// Convert a Kamailio dispatcher.list to [[dispatcher.set]] tables (printed); bad lines
    /// are reported and skipped.
    ImportKamailio { file: PathBuf },
}

/// Where a running instance is managed: its address and token. Found from its configuration
/// (`--config`, or the embedded default): `[management] listen`, and the token in
/// `[management] token_file` or `switchboard.token` beside the database; `--mi` and
/// `--token-file` override them.
#[derive(clap::Args)]
pub struct Remote {
    /// The management endpoint (default: http://<[management] listen>/mi).
    #[arg(long, global = true)]
    pub mi: Option<String>,
    /// The configuration of the running instance (default: the embedded default).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The file with the management token (default: the configuration's).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

/// A management endpoint and its token.
pub struct Mi {
    pub url: String,
    pub token: Option<String>,
    /// Where the token was looked for (for the error when it is refused).
    pub token_path: PathBuf,
}

impl Remote {
    /// Resolves the endpoint and reads the token.
    pub fn connect(&self) -> anyhow::Result<Mi> {
        let (loaded, name) = crate::load_config(&self.config, 0)?;
        let cfg = loaded.map_err(|errs| {
            let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("{name}: {}", all.join("; "))
        })?;
        let token_path = self.token_file.clone().unwrap_or_else(|| cfg.token_path());
        let token = crate::token::read(&token_path).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Mi {
            url: self
                .mi
                .clone()
                .unwrap_or_else(|| format!("http://{}/mi", cfg.management)),
            token,
            token_path,
        })
    }
}

/// A minimal HTTP/1.1 POST of one JSON-RPC request.
fn rpc(mi: &Mi, method: &str, params: Value) -> Result<Value, String> {
    let url = mi.url.as_str();
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--mi {url:?}: only http:// URLs are supported"))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut s = TcpStream::connect(host)
        .map_err(|e| format!("cannot reach {url}: {e} (is switchboard running?)"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = mi
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("reading the reply: {e}"))?;
    let (head, payload) = resp.split_once("\r\n\r\n").ok_or("malformed HTTP reply")?;
    if head.starts_with("HTTP/1.1 401") {
        return Err(match &mi.token {
            None => format!(
                "{url} wants a token and there is none at {} (give the instance's --config, or --token-file)",
                mi.token_path.display()
            ),
            Some(_) => format!(
                "{url} refused the token in {} (is it this instance's?)",
                mi.token_path.display()
            ),
        });
    }
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("HTTP error: {}", head.lines().next().unwrap_or("")));
    }
    let v: Value =
        serde_json::from_str(payload.trim()).map_err(|e| format!("bad JSON reply: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_string());
    }
    Ok(v.get("result").cloned().unwrap_or(Value::Null))
}

fn print_list(v: &Value) {
    println!(
        "{:<6} {:<38} {:<10} {:>6} {:>8} {:>6} {:>8}  description",
        "set", "destination", "state", "weight", "priority", "calls", "rtt_ms"
    );
    for s in v["sets"].as_array().into_iter().flatten() {
        for d in s["destinations"].as_array().into_iter().flatten() {
            println!(
                "{:<6} {:<38} {:<10} {:>6} {:>8} {:>6} {:>8.2}  {}",
                s["id"].to_string(),
                d["uri"].as_str().unwrap_or(""),
                d["state"].as_str().unwrap_or(""),
                d["weight"].to_string(),
                d["priority"].to_string(),
                d["calls"].to_string(),
                d["rtt_ms"].as_f64().unwrap_or(0.0),
                d["description"].as_str().unwrap_or("")
            );
        }
    }
}

fn import_kamailio(file: &PathBuf) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let (entries, mut bad) = sip_proxy::dispatcher::kamailio::parse_list(&text);
    let mut sets: Vec<(i64, Vec<String>)> = Vec::new();
    for e in &entries {
        if let Err(err) = parse_destination("destination", &e.uri) {
            bad.push((e.line, err.to_string()));
            continue;
        }
        let line = format!(
            "  {{ uri = {:?}, weight = {}, priority = {}, attrs = {:?} }},",
            e.uri, e.weight, e.priority, e.attrs
        );
        match sets.iter_mut().find(|(id, _)| *id == e.set) {
            Some((_, v)) => v.push(line),
            None => sets.push((e.set, vec![line])),
        }
    }
    bad.sort();
    for (line, why) in &bad {
        eprintln!("{}: line {line}: {why} (skipped)", file.display());
    }
    if sets.is_empty() {
        return Err(format!("{}: no usable destination", file.display()));
    }
    println!("# imported from {}", file.display());
    for (id, dests) in &sets {
        println!(
            "[[dispatcher.set]]\nid = {id}\nalgorithm = \"round-robin\"\ndestinations = [\n{}\n]\n",
            dests.join("\n")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one dispatcher subcommand.
pub fn dispatcher(mi: &Mi, cmd: DispatcherCmd) -> anyhow::Result<ExitCode> {
    let r = match cmd {
        DispatcherCmd::List { json } => rpc(mi, "ds_list", json!({})).map(|v| {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_list(&v);
            }
            ExitCode::SUCCESS
        }),
        DispatcherCmd::Add { set, uri, weight, priority, attrs, description } => rpc(mi, "ds_add", json!({"group": set, "address": uri, "weight": weight, "priority": priority, "attrs": attrs, "description": description})).map(|v| {
            println!("{v}");
            ExitCode::SUCCESS
        }),
        DispatcherCmd::Remove { set, uri } => rpc(mi, "ds_remove", json!({"group": set, "address": uri})).map(|v| {
            println!("{v}");
            ExitCode::SUCCESS
        }),
        DispatcherCmd::SetState { set, uri, state } => rpc(mi, "ds_set_state", json!({"state": state, "group": set, "address": uri})).map(|v| {
            println!("{v}");
            ExitCode::SUCCESS
        }),
        DispatcherCmd::Reload { no_inherit } => rpc(mi, "ds_reload", json!({"inherit_state": !no_inherit})).map(|v| {
            println!("{v}");
            ExitCode::SUCCESS
        }),
        DispatcherCmd::ImportKamailio { file } => import_kamailio(&file),
    };
    match r {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[derive(Subcommand)]
pub enum SubscriberCmd {
    /// Add a subscriber (or replace its password): `subscriber add alice@example.com --password S`.
    Add {
        aor: String,
        /// The password; `-` reads it from the first line of standard input, so it does not
        /// show in the process list or the shell history.
        #[arg(long)]
        password: String,
        /// Store only the HA1 hashes (MD5 and SHA-256, OpenSIPS' `ha1`/`ha1_sha256`), not the
        /// password (the default follows `[registrar] store_ha1`).
        #[arg(long)]
        ha1: bool,
    },
    /// Change a subscriber's password (`--password -` reads it from standard input).
    Passwd {
        aor: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        ha1: bool,
    },
    /// Remove a subscriber.
    Remove { aor: String },
    /// List the subscribers in the database, and whether each is registered now.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the subscriber table (after editing it with SQL).
    Reload,
}

#[derive(Subcommand)]
pub enum UlCmd {
    /// Every registered AOR and its contacts.
    Dump {
        #[arg(long)]
        json: bool,
    },
    /// The contacts of one AOR.
    Show {
        aor: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an AOR with all its contacts.
    Rm { aor: String },
    /// Remove one contact of an AOR.
    RmContact { aor: String, contact: String },
}

fn done(r: Result<Value, String>) -> anyhow::Result<ExitCode> {
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The password of `--password`: `-` reads the first line of standard input.
fn password_arg(p: &str) -> Result<String, String> {
    if p != "-" {
        return Ok(p.to_string());
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from standard input: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        return Err("--password -: standard input gave an empty password".into());
    }
    Ok(line)
}

fn secret_params(aor: String, password: String, ha1: bool) -> Value {
    let mut p = json!({"aor": aor, "password": password});
    if ha1 {
        p["ha1"] = json!(true);
    }
    p
}

/// Runs one subscriber subcommand.
pub fn subscriber(mi: &Mi, cmd: SubscriberCmd) -> anyhow::Result<ExitCode> {
    done(match cmd {
        SubscriberCmd::Add { aor, password, ha1 } => password_arg(&password).and_then(|p| {
            rpc(mi, "subscriber_add", secret_params(aor, p, ha1)).map(|v| {
                let what = if v["updated"] == true {
                    "updated"
                } else {
                    "added"
                };
                json!({"subscriber": v["subscriber"], "result": what, "stored": v["stored"]})
            })
        }),
        SubscriberCmd::Passwd { aor, password, ha1 } => password_arg(&password)
            .and_then(|p| rpc(mi, "subscriber_passwd", secret_params(aor, p, ha1))),
        SubscriberCmd::Remove { aor } => rpc(mi, "subscriber_remove", json!({"aor": aor})),
        SubscriberCmd::List { json: true } => rpc(mi, "subscriber_list", json!({})),
        SubscriberCmd::List { json: false } => {
            return match rpc(mi, "subscriber_list", json!({})) {
                Ok(v) => {
                    println!("subscriber");
                    let names = v["subscribers"].as_array().cloned().unwrap_or_default();
                    for n in &names {
                        println!("{}", n.as_str().unwrap_or(""));
                    }
                    for b in v["skipped"].as_array().into_iter().flatten() {
                        eprintln!(
                            "skipped: {}",
                            b.as_str().map_or(b.to_string(), str::to_string)
                        );
                    }
                    println!("{} subscriber(s)", names.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => done(Err(e)),
            }
        }
        SubscriberCmd::Reload => rpc(mi, "subscriber_reload", json!({})),
    })
}

fn print_contacts(v: &Value) {
    println!(
        "{:<28} {:<44} {:>7} {:>5} {:<26} nat",
        "aor", "contact", "expires", "q", "received"
    );
    let aors = v["Domains"][0]["AORs"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![v.clone()]);
    for a in &aors {
        for c in a["Contacts"].as_array().into_iter().flatten() {
            println!(
                "{:<28} {:<44} {:>7} {:>5} {:<26} {}",
                a["AOR"].as_str().unwrap_or(""),
                c["Contact"].as_str().unwrap_or(""),
                c["Expires"].to_string(),
                c["Q"].to_string(),
                c["Received"].as_str().unwrap_or(""),
                if c["Cflags"] == "NAT" { "yes" } else { "no" }
            );
        }
    }
}

/// Runs one location (usrloc) subcommand.
pub fn ul(mi: &Mi, cmd: UlCmd) -> anyhow::Result<ExitCode> {
    let table = |r: Result<Value, String>| match r {
        Ok(v) => {
            print_contacts(&v);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    };
    match cmd {
        UlCmd::Dump { json: true } => done(rpc(mi, "ul_dump", json!({}))),
        UlCmd::Dump { json: false } => table(rpc(mi, "ul_dump", json!({}))),
        UlCmd::Show { aor, json: true } => done(rpc(mi, "ul_show_contact", json!({"aor": aor}))),
        UlCmd::Show { aor, json: false } => table(rpc(mi, "ul_show_contact", json!({"aor": aor}))),
        UlCmd::Rm { aor } => done(rpc(mi, "ul_rm", json!({"aor": aor}))),
        UlCmd::RmContact { aor, contact } => done(rpc(
            mi,
            "ul_rm_contact",
            json!({"aor": aor, "contact": contact}),
        )),
    }
}

#[derive(Subcommand)]
pub enum CdrCmd {
    /// The calls that ended last, newest first, as a table.
    List {
        /// Only calls that ended at or after this UNIX time.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// How many calls.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print the CDRs as CSV or JSON, oldest first (for billing and archives).
    Export {
        #[arg(long, default_value_t = 0)]
        since: i64,
        #[arg(long, default_value_t = 1_000_000)]
        limit: i64,
        /// csv or json
        #[arg(long, default_value = "csv")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Which tables and columns exist, which are missing, at which version; changes nothing.
    Check {
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Create the tables that do not exist (OpenSIPS 3 schemas), then check.
    Init,
    /// Create missing tables and add the columns older schemas lack, then check.
    Migrate,
}

/// The report of `switchboard db check`: one line a table.
pub fn print_db_report(engine: &str, url: &str, report: &[store::TableReport], json: bool) {
    if json {
        let v: Vec<Value> = report
            .iter()
            .map(|t| {
                json!({
                    "table": t.table,
                    "exists": t.exists,
                    "usable": t.usable(),
                    "version": t.version,
                    "expected_version": t.expected_version,
                    "missing": t.missing,
                    "missing_optional": t.missing_optional,
                    "unfilled": t.unfilled,
                })
            })
            .collect();
        println!("{}", json!({"engine": engine, "url": url, "tables": v}));
        return;
    }
    println!("{engine} {url}");
    println!("{:<18} {:<8} {:<9} NOTES", "TABLE", "STATE", "VERSION");
    for t in report {
        let state = match (t.exists, t.usable()) {
            (false, _) => "missing",
            (true, true) => "ok",
            (true, false) => "unusable",
        };
        let version = match (t.version, t.expected_version) {
            (_, 0) => "-".to_string(),
            (Some(v), e) if v == e => v.to_string(),
            (Some(v), e) => format!("{v} (≠{e})"),
            (None, e) => format!("? ({e})"),
        };
        let mut notes = Vec::new();
        if !t.missing.is_empty() {
            notes.push(format!(
                "lacks {} (switchboard db migrate)",
                t.missing.join(", ")
            ));
        }
        if !t.unfilled.is_empty() {
            notes.push(format!(
                "requires {} without a default: inserts fail",
                t.unfilled.join(", ")
            ));
        }
        if !t.missing_optional.is_empty() {
            notes.push(format!(
                "without {} (not written)",
                t.missing_optional.join(", ")
            ));
        }
        println!(
            "{:<18} {:<8} {:<9} {}",
            t.table,
            state,
            version,
            notes.join("; ")
        );
    }
}

/// UNIX seconds as `2026-11-30 16:55:02` (UTC).
pub fn utc(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Prints CDR rows as a table, CSV or JSON.
pub fn print_cdrs(rows: &[store::CdrRow], format: &str) -> Result<(), String> {
    let fields = |r: &store::CdrRow| -> Vec<String> {
        vec![
            r.callid.clone(),
            if r.answered { "answered" } else { "failed" }.into(),
            r.sip_code.to_string(),
            r.sip_reason.clone(),
            format!("{}@{}", r.from_user, r.from_domain),
            format!("{}@{}", r.to_user, r.to_domain),
            format!("{}@{}", r.ruri_user, r.ruri_domain),
            r.src_ip.clone(),
            r.node.clone().unwrap_or_default(),
            r.setup_time.to_string(),
            r.answer_time.map(|a| a.to_string()).unwrap_or_default(),
            r.end_time.to_string(),
            r.duration.to_string(),
            r.hangup_by.clone(),
        ]
    };
    const HEAD: [&str; 14] = [
        "callid",
        "result",
        "code",
        "reason",
        "from",
        "to",
        "ruri",
        "source",
        "node",
        "setup",
        "answer",
        "end",
        "duration",
        "hangup_by",
    ];
    match format {
        "csv" => {
            println!("{}", HEAD.join(","));
            for r in rows {
                println!(
                    "{}",
                    fields(r)
                        .iter()
                        .map(|f| csv_field(f))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        "json" => {
            let v: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut m = serde_json::Map::new();
                    for (k, f) in HEAD.iter().zip(fields(r)) {
                        m.insert((*k).to_string(), Value::String(f));
                    }
                    Value::Object(m)
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        "table" => {
            println!(
                "{:<19} {:<8} {:>4} {:<24} {:<24} {:>8} {:<9} {:<28} callid",
                "ended (UTC)", "result", "code", "from", "to", "duration", "hangup_by", "node"
            );
            for r in rows {
                let f = fields(r);
                println!(
                    "{:<19} {:<8} {:>4} {:<24} {:<24} {:>8} {:<9} {:<28} {}",
                    utc(r.end_time),
                    f[1],
                    f[2],
                    f[4],
                    f[5],
                    f[12],
                    f[13],
                    f[8],
                    f[0]
                );
            }
        }
        other => return Err(format!("--format {other:?}: csv or json")),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum LbCmd {
    /// Nodes: group, state, and per resource the load and capacity.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a node's capacity for a resource.
    Resize {
        uri: String,
        resource: String,
        #[arg(allow_hyphen_values = true)]
        capacity: i64,
    },
    /// Enable (on), disable (off) or drain (draining: no new calls, its calls finish) a
    /// node; the dispatcher sees the same state where it names the same server.
    Status { uri: String, status: String },
    /// Re-read the nodes (configuration file or load_balancer table); calls stay counted.
    Reload,
}

/// Runs one balancer subcommand.
pub fn lb(mi: &Mi, cmd: LbCmd) -> anyhow::Result<ExitCode> {
    done(match cmd {
        LbCmd::List { json: true } => rpc(mi, "lb_list", json!({})),
        LbCmd::List { json: false } => {
            return match rpc(mi, "lb_list", json!({})) {
                Ok(v) => {
                    print_lb(&v);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => done(Err(e)),
            }
        }
        LbCmd::Resize {
            uri,
            resource,
            capacity,
        } => rpc(
            mi,
            "lb_resize",
            json!({"destination": uri, "resource": resource, "capacity": capacity}),
        ),
        LbCmd::Status { uri, status } => rpc(
            mi,
            "lb_status",
            json!({"destination": uri, "status": status}),
        ),
        LbCmd::Reload => rpc(mi, "lb_reload", json!({})),
    })
}

/// One line per node and resource: `load/capacity` and what is free.
fn print_lb(v: &Value) {
    println!(
        "{:>4} {:>5} {:<32} {:<9} {:<10} {:>7} {:>8} {:>6}  description",
        "id", "group", "node", "state", "resource", "load", "capacity", "free"
    );
    for n in v["Destinations"].as_array().into_iter().flatten() {
        for (i, r) in n["resources"].as_array().into_iter().flatten().enumerate() {
            let (max, load) = (
                r["max"].as_i64().unwrap_or(0),
                r["load"].as_i64().unwrap_or(0),
            );
            let first = i == 0;
            println!(
                "{:>4} {:>5} {:<32} {:<9} {:<10} {:>7} {:>8} {:>6}  {}",
                if first {
                    n["id"].to_string()
                } else {
                    String::new()
                },
                if first {
                    n["group"].to_string()
                } else {
                    String::new()
                },
                if first {
                    n["uri"].as_str().unwrap_or("")
                } else {
                    ""
                },
                if first {
                    n["state"].as_str().unwrap_or("")
                } else {
                    ""
                },
                r["name"].as_str().unwrap_or(""),
                load,
                max,
                (max - load).max(0),
                if first {
                    n["description"].as_str().unwrap_or("")
                } else {
                    ""
                },
            );
        }
    }
    println!("calls counted: {}", v["calls"]);
}

#[derive(Subcommand)]
pub enum DrCmd {
    /// Carrier gateways: state, calls sent, calls failed.
    Gateways {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch a gateway on or off (or back to probing).
    GwStatus { gwid: String, status: String },
    /// The rule and gateways a number would take (drouting group, default 0).
    Route {
        number: String,
        #[arg(long, default_value_t = 0)]
        group: i64,
    },
    /// Re-read the number tables (configuration file or the OpenSIPS tables).
    Reload,
}

/// Runs one drouting subcommand.
pub fn dr(mi: &Mi, cmd: DrCmd) -> anyhow::Result<ExitCode> {
    done(match cmd {
        DrCmd::Gateways { json: true } => rpc(mi, "dr_gw_status", json!({})),
        DrCmd::Gateways { json: false } => {
            return match rpc(mi, "dr_gw_status", json!({})) {
                Ok(v) => {
                    println!(
                        "{:<16} {:<32} {:<9} {:>9} {:>9}",
                        "gateway", "address", "state", "attempts", "failures"
                    );
                    for g in v["Gateways"].as_array().into_iter().flatten() {
                        println!(
                            "{:<16} {:<32} {:<9} {:>9} {:>9}",
                            g["ID"].as_str().unwrap_or(""),
                            g["IP"].as_str().unwrap_or(""),
                            g["state"].as_str().unwrap_or(""),
                            g["attempts"],
                            g["failures"]
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => done(Err(e)),
            };
        }
        DrCmd::GwStatus { gwid, status } => {
            rpc(mi, "dr_gw_status", json!({"gw_id": gwid, "status": status}))
        }
        DrCmd::Route { number, group } => rpc(
            mi,
            "dr_number_routing",
            json!({"groupid": group, "number": number}),
        ),
        DrCmd::Reload => rpc(mi, "dr_reload", json!({})),
    })
}

#[derive(Subcommand)]
pub enum DpCmd {
    /// Translate a number with dialplan DPID's rules.
    Translate { dpid: i64, input: String },
    /// Re-read the number tables (configuration file or the OpenSIPS tables).
    Reload,
}

/// Runs one dialplan subcommand.
pub fn dp(mi: &Mi, cmd: DpCmd) -> anyhow::Result<ExitCode> {
    done(match cmd {
        DpCmd::Translate { dpid, input } => {
            rpc(mi, "dp_translate", json!({"dpid": dpid, "input": input}))
        }
        DpCmd::Reload => rpc(mi, "dp_reload", json!({})),
    })
}

#[derive(Subcommand)]
pub enum RtpengineCmd {
    /// The instances: set, weight, state, round-trip time, calls, requests.
    Show {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take an instance (its socket, like udp:10.0.0.7:2223, or "all") out of use for new
    /// calls, or back.
    Enable {
        socket: String,
        #[arg(value_parser = ["on", "off", "1", "0"])]
        state: String,
    },
    /// Re-read the instances from the configuration file (state of kept ones kept).
    Reload,
}

/// Runs one rtpengine subcommand.
pub fn rtpengine(mi: &Mi, cmd: RtpengineCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RtpengineCmd::Show { json: true } => done(rpc(mi, "rtpengine_show", json!({}))),
        RtpengineCmd::Show { json: false } => match rpc(mi, "rtpengine_show", json!({})) {
            Ok(v) => {
                println!(
                    "{:<28} {:>4} {:>6} {:<9} {:>8} {:>7} {:>9} {:>8} {:>6}",
                    "instance",
                    "set",
                    "weight",
                    "state",
                    "rtt_ms",
                    "calls",
                    "requests",
                    "timeouts",
                    "errors"
                );
                let list = v["instances"].as_array().cloned().unwrap_or_default();
                for i in &list {
                    println!(
                        "{:<28} {:>4} {:>6} {:<9} {:>8.2} {:>7} {:>9} {:>8} {:>6}",
                        i["socket"].as_str().unwrap_or(""),
                        i["set"],
                        i["weight"],
                        i["state"].as_str().unwrap_or(""),
                        i["rtt_ms"].as_f64().unwrap_or(0.0),
                        i["calls"],
                        i["requests"],
                        i["timeouts"],
                        i["errors"]
                    );
                }
                println!("{} relayed call(s)", v["relayed_calls"]);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => done(Err(e)),
        },
        RtpengineCmd::Enable { socket, state } => {
            let on = matches!(state.as_str(), "on" | "1");
            done(rpc(
                mi,
                "rtpengine_enable",
                json!({"url": socket, "enable": i64::from(on)}),
            ))
        }
        RtpengineCmd::Reload => done(rpc(mi, "rtpengine_reload", json!({}))),
    }
}

#[derive(Subcommand)]
pub enum DlgCmd {
    /// The calls in progress: state, caller, callee, media server, age.
    List {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a call (a BYE to both sides): by the ID `dlg list` shows.
    End { id: u64 },
}

/// Runs one dialog subcommand.
pub fn dlg(mi: &Mi, cmd: DlgCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DlgCmd::List { json: true } => done(rpc(mi, "dlg_list", json!({}))),
        DlgCmd::List { json: false } => match rpc(mi, "dlg_list", json!({})) {
            Ok(v) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                println!(
                    "{:>8} {:<10} {:<30} {:<30} {:<28} {:>6}  callid",
                    "id", "state", "from", "to", "node", "age_s"
                );
                let list = v["Dialogs"].as_array().cloned().unwrap_or_default();
                for d in &list {
                    let start = d["start_time"].as_i64().unwrap_or(now);
                    println!(
                        "{:>8} {:<10} {:<30} {:<30} {:<28} {:>6}  {}",
                        d["ID"].to_string(),
                        d["state"].as_str().unwrap_or(""),
                        d["from_uri"].as_str().unwrap_or(""),
                        d["to_uri"].as_str().unwrap_or(""),
                        d["node"].as_str().unwrap_or("-"),
                        (now - start).max(0),
                        d["callid"].as_str().unwrap_or("")
                    );
                }
                println!("{} call(s)", list.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => done(Err(e)),
        },
        DlgCmd::End { id } => done(rpc(mi, "dlg_end_dlg", json!({"dialog_id": id}))),
    }
}

/// `name=value` arguments as JSON-RPC named parameters: a value that parses as JSON (a
/// number, true, a list) is sent as such, any other as a string.
pub fn mi_params(args: &[String]) -> Result<Value, String> {
    let mut m = serde_json::Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("{a:?}: parameters are name=value"))?;
        if k.is_empty() {
            return Err(format!("{a:?}: a parameter needs a name"));
        }
        let v = serde_json::from_str::<Value>(v)
            .ok()
            .filter(|j| !j.is_string())
            .unwrap_or_else(|| Value::String(v.to_string()));
        if m.insert(k.to_string(), v).is_some() {
            return Err(format!("parameter {k} given twice"));
        }
    }
    Ok(Value::Object(m))
}

/// `switchboard mi METHOD [name=value ...]`.
pub fn mi_call(mi: &Mi, method: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    match mi_params(args) {
        Ok(p) => done(rpc(mi, method, p)),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

#[derive(Subcommand)]
pub enum BanCmd {
    /// The sources banned now (flood, scanner, password guessing, operator) and the
    /// usernames banned from a source.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ban an address (an IPv6 address bans its prefix, /64 by default).
    Add {
        ip: String,
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
    },
    /// Lift the bans of an address (or only the ban of one username from it).
    Remove {
        ip: String,
        #[arg(long)]
        user: Option<String>,
    },
}

/// Runs one ban-list subcommand.
pub fn ban(mi: &Mi, cmd: BanCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BanCmd::List { json: true } => done(rpc(mi, "ban_list", json!({}))),
        BanCmd::List { json: false } => match rpc(mi, "ban_list", json!({})) {
            Ok(v) => {
                println!(
                    "{:<28} {:<18} {:>10} {:>7}",
                    "source", "reason", "remaining", "strikes"
                );
                for b in v["bans"].as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<18} {:>9}s {:>7}",
                        b["source"].as_str().unwrap_or(""),
                        b["reason"].as_str().unwrap_or(""),
                        b["remaining_s"],
                        b["strikes"]
                    );
                }
                for u in v["user_bans"].as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<18} {:>9}s {:>7}",
                        u["source"].as_str().unwrap_or(""),
                        format!("user {}", u["user"].as_str().unwrap_or("")),
                        u["remaining_s"],
                        "-"
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => done(Err(e)),
        },
        BanCmd::Add { ip, seconds } => {
            done(rpc(mi, "ban_add", json!({"ip": ip, "seconds": seconds})))
        }
        BanCmd::Remove { ip, user } => done(rpc(mi, "ban_remove", json!({"ip": ip, "user": user}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mi_parameters_are_name_value_pairs() {
        let v = mi_params(&[
            "group=1".into(),
            "address=sip:10.0.0.5:5060".into(),
            "state=i".into(),
            "flags=[1,2]".into(),
            "quoted=\"7\"".into(),
        ])
        .unwrap();
        assert_eq!(
            v,
            json!({"group": 1, "address": "sip:10.0.0.5:5060", "state": "i", "flags": [1, 2], "quoted": "\"7\""})
        );
        assert!(mi_params(&["novalue".into()])
            .unwrap_err()
            .contains("name=value"));
        assert!(mi_params(&["=1".into()]).unwrap_err().contains("name"));
        assert!(mi_params(&["a=1".into(), "a=2".into()])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_057_237), "2026-11-30 16:47:17");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59");
        assert_eq!(utc(-1), "1969-12-31 23:59:59");
    }
}

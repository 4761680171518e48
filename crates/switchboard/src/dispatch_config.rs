//! The `[dispatcher]` section: probing settings and `[[dispatcher.set]]` tables. Each
//! destination is a URI string or a table (`uri`, `weight`, `priority`, `attrs`,
//! `description`, `state`), read by hand so that every refusal names its exact key.

use std::time::Duration;

use serde::Deserialize;
use sip_proxy::dispatcher::{
    Algorithm, DestConfig, DestState, ProbeConfig, ProbeMode, ReplyCodes, SetConfig,
};

use crate::config::{err, parse_destination, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDispatcher {
    #[serde(default = "d_attempts")]
    pub max_attempts: i64,
    #[serde(default = "d_interval")]
    pub probe_interval_s: i64,
    #[serde(default = "d_method")]
    pub probe_method: String,
    #[serde(default = "d_from")]
    pub probe_from: String,
    #[serde(default = "d_maxfwd")]
    pub probe_max_forwards: i64,
    #[serde(default = "d_down")]
    pub probe_threshold_down: i64,
    #[serde(default = "d_up")]
    pub probe_threshold_up: i64,
    #[serde(default)]
    pub probe_reply_codes: String,
    #[serde(default = "d_mode")]
    pub probe_mode: String,
    /// `config`: destinations inline; `database`: from the `dispatcher` table.
    #[serde(default = "d_source")]
    pub source: String,
    /// Write state changes to the table's `state` column (source = database).
    #[serde(default)]
    pub persist_state: bool,
    #[serde(default)]
    pub set: Vec<RawSet>,
}

fn d_source() -> String {
    "config".into()
}

fn d_attempts() -> i64 {
    3
}
fn d_interval() -> i64 {
    5
}
fn d_method() -> String {
    "OPTIONS".into()
}
fn d_from() -> String {
    "sip:switchboard@localhost".into()
}
fn d_maxfwd() -> i64 {
    10
}
fn d_down() -> i64 {
    3
}
fn d_up() -> i64 {
    1
}
fn d_mode() -> String {
    "all".into()
}

impl Default for RawDispatcher {
    fn default() -> Self {
        RawDispatcher {
            max_attempts: d_attempts(),
            probe_interval_s: d_interval(),
            probe_method: d_method(),
            probe_from: d_from(),
            probe_max_forwards: d_maxfwd(),
            probe_threshold_down: d_down(),
            probe_threshold_up: d_up(),
            probe_reply_codes: String::new(),
            probe_mode: d_mode(),
            source: d_source(),
            persist_state: false,
            set: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSet {
    pub id: i64,
    #[serde(default = "d_alg")]
    pub algorithm: toml::Value,
    #[serde(default)]
    pub hash_header: Option<String>,
    #[serde(default)]
    pub destinations: Vec<toml::Value>,
}

fn d_alg() -> toml::Value {
    toml::Value::String("round-robin".into())
}

/// The validated dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    /// Destinations come from the database table; `sets` then carry only the algorithms.
    pub from_database: bool,
    pub persist_state: bool,
    pub sets: Vec<SetConfig>,
    pub probe: ProbeConfig,
    pub max_attempts: usize,
}

/// A destination from its parts (shared by the config, the CLI and the API).
#[allow(clippy::too_many_arguments)]
pub fn dest_from_parts(
    key: &str,
    uri: &str,
    weight: i64,
    priority: i64,
    attrs: &str,
    description: &str,
    state: &str,
) -> Result<DestConfig, ConfigError> {
    let d = parse_destination(&format!("{key}.uri"), uri)?;
    if !(0..=10_000).contains(&weight) {
        return Err(err(format!("{key}.weight"), weight, "must be 0..=10000"));
    }
    let priority = i32::try_from(priority)
        .map_err(|_| err(format!("{key}.priority"), priority, "out of range"))?;
    let state = DestState::parse(state).ok_or_else(|| {
        err(
            format!("{key}.state"),
            format!("{state:?}"),
            "must be active, inactive, probing, disabled or draining",
        )
    })?;
    Ok(DestConfig {
        name: d.name,
        uri: d.uri,
        transport: d.transport,
        addr: d.addr,
        weight: weight as u32,
        priority,
        attrs: attrs.to_string(),
        description: description.to_string(),
        state,
    })
}

fn dest_from_value(key: &str, v: &toml::Value) -> Result<DestConfig, ConfigError> {
    match v {
        toml::Value::String(s) => dest_from_parts(key, s, 1, 0, "", "", "active"),
        toml::Value::Table(t) => {
            const KEYS: [&str; 6] = ["uri", "weight", "priority", "attrs", "description", "state"];
            if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(err(
                    format!("{key}.{k}"),
                    "-",
                    format!("unknown key (expected one of {})", KEYS.join(", ")),
                ));
            }
            let s = |k: &str, d: &str| -> Result<String, ConfigError> {
                match t.get(k) {
                    None => Ok(d.to_string()),
                    Some(toml::Value::String(s)) => Ok(s.clone()),
                    Some(o) => Err(err(format!("{key}.{k}"), o, "must be a string")),
                }
            };
            let n = |k: &str, d: i64| -> Result<i64, ConfigError> {
                match t.get(k) {
                    None => Ok(d),
                    Some(toml::Value::Integer(i)) => Ok(*i),
                    Some(o) => Err(err(format!("{key}.{k}"), o, "must be an integer")),
                }
            };
            let uri = match t.get("uri") {
                Some(toml::Value::String(u)) => u.clone(),
                Some(o) => return Err(err(format!("{key}.uri"), o, "must be a string")),
                None => {
                    return Err(err(
                        format!("{key}.uri"),
                        "(missing)",
                        "every destination needs a uri",
                    ))
                }
            };
            dest_from_parts(
                key,
                &uri,
                n("weight", 1)?,
                n("priority", 0)?,
                &s("attrs", "")?,
                &s("description", "")?,
                &s("state", "active")?,
            )
        }
        other => Err(err(
            key,
            other,
            "must be a URI string or a table with a uri",
        )),
    }
}

/// Validates the section, pushing every error.
pub fn validate(raw: &RawDispatcher, errors: &mut Vec<ConfigError>) -> DispatcherSettings {
    let from_database = match raw.source.as_str() {
        "config" => false,
        "database" => true,
        other => {
            errors.push(err(
                "dispatcher.source",
                format!("{other:?}"),
                "must be config or database",
            ));
            false
        }
    };
    if raw.persist_state && !from_database {
        errors.push(err(
            "dispatcher.persist_state",
            true,
            "needs source = \"database\"",
        ));
    }
    let mut sets = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, s) in raw.set.iter().enumerate() {
        let key = format!("dispatcher.set[{i}]");
        if s.id < 0 {
            errors.push(err(format!("{key}.id"), s.id, "must not be negative"));
        }
        if !ids.insert(s.id) {
            errors.push(err(format!("{key}.id"), s.id, "duplicate set id"));
        }
        let alg_text = match &s.algorithm {
            toml::Value::String(a) => a.clone(),
            toml::Value::Integer(n) => n.to_string(),
            other => other.to_string(),
        };
        let algorithm = match Algorithm::parse(&alg_text) {
            Ok(a) => a,
            Err(why) => {
                errors.push(err(format!("{key}.algorithm"), &s.algorithm, why));
                Algorithm::RoundRobin
            }
        };
        if algorithm == Algorithm::HashValue && s.hash_header.is_none() {
            errors.push(err(
                format!("{key}.hash_header"),
                "(missing)",
                "algorithm hash-value needs the header whose value is hashed",
            ));
        }
        if s.destinations.is_empty() && !from_database {
            errors.push(err(
                format!("{key}.destinations"),
                "[]",
                "a set needs at least one destination",
            ));
        }
        if !s.destinations.is_empty() && from_database {
            errors.push(err(
                format!("{key}.destinations"),
                "[...]",
                "with source = \"database\" destinations come from the dispatcher table",
            ));
        }
        let mut dests: Vec<DestConfig> = Vec::new();
        for (j, v) in s.destinations.iter().enumerate() {
            let dkey = format!("{key}.destinations[{j}]");
            match dest_from_value(&dkey, v) {
                Ok(d) if dests.iter().any(|o| o.uri == d.uri) => {
                    errors.push(err(dkey, &*d.uri, "duplicate destination in this set"))
                }
                Ok(d) => dests.push(d),
                Err(e) => errors.push(e),
            }
        }
        sets.push(SetConfig {
            id: s.id,
            algorithm,
            hash_header: s.hash_header.clone(),
            destinations: dests,
        });
    }
    if !(1..=16).contains(&raw.max_attempts) {
        errors.push(err(
            "dispatcher.max_attempts",
            raw.max_attempts,
            "must be 1..=16",
        ));
    }
    if !(0..=3600).contains(&raw.probe_interval_s) {
        errors.push(err(
            "dispatcher.probe_interval_s",
            raw.probe_interval_s,
            "must be 0 (off) ..= 3600",
        ));
    }
    let method = match raw.probe_method.to_ascii_uppercase().as_str() {
        "OPTIONS" => "OPTIONS",
        "INFO" => "INFO",
        _ => {
            errors.push(err(
                "dispatcher.probe_method",
                format!("{:?}", raw.probe_method),
                "must be OPTIONS or INFO",
            ));
            "OPTIONS"
        }
    };
    if sip_wire::Uri::parse(&raw.probe_from).is_err() {
        errors.push(err(
            "dispatcher.probe_from",
            format!("{:?}", raw.probe_from),
            "must be a SIP URI",
        ));
    }
    for (k, v, lo, hi) in [
        ("probe_max_forwards", raw.probe_max_forwards, 1, 255),
        ("probe_threshold_down", raw.probe_threshold_down, 1, 100),
        ("probe_threshold_up", raw.probe_threshold_up, 1, 100),
    ] {
        if !(lo..=hi).contains(&v) {
            errors.push(err(
                format!("dispatcher.{k}"),
                v,
                format!("must be {lo}..={hi}"),
            ));
        }
    }
    let codes = ReplyCodes::parse(&raw.probe_reply_codes).unwrap_or_else(|why| {
        errors.push(err(
            "dispatcher.probe_reply_codes",
            format!("{:?}", raw.probe_reply_codes),
            why,
        ));
        ReplyCodes::default()
    });
    let mode = match raw.probe_mode.as_str() {
        "all" | "1" => ProbeMode::All,
        "only-failed" | "0" => ProbeMode::OnlyFailed,
        _ => {
            errors.push(err(
                "dispatcher.probe_mode",
                format!("{:?}", raw.probe_mode),
                "must be all or only-failed",
            ));
            ProbeMode::All
        }
    };
    let probe = ProbeConfig {
        interval: Duration::from_secs(raw.probe_interval_s.clamp(0, 3600) as u64),
        method,
        from: raw.probe_from.clone(),
        max_forwards: raw.probe_max_forwards.clamp(1, 255) as u8,
        threshold_down: raw.probe_threshold_down.clamp(1, 100) as u32,
        threshold_up: raw.probe_threshold_up.clamp(1, 100) as u32,
        codes,
        mode,
    };
    DispatcherSettings {
        from_database,
        persist_state: raw.persist_state,
        sets,
        probe,
        max_attempts: raw.max_attempts.clamp(1, 16) as usize,
    }
}

/// Builds sets from `dispatcher` table rows: the algorithm of a set comes from the
/// `[[dispatcher.set]]` with its id (round robin otherwise). A row that does not validate is
/// returned as a problem (row id and reason) and skipped; the others still load.
pub fn sets_from_rows(
    rows: &[store::DispatcherRow],
    configured: &[SetConfig],
) -> (Vec<SetConfig>, Vec<String>) {
    let mut sets: Vec<SetConfig> = configured
        .iter()
        .map(|s| SetConfig {
            destinations: Vec::new(),
            ..s.clone()
        })
        .collect();
    let mut problems = Vec::new();
    for r in rows {
        let key = format!("dispatcher row {}", r.id);
        let Ok(weight) = r.weight.trim().parse::<i64>() else {
            problems.push(format!("{key}: weight {:?} is not a number (fs:// weights are not supported yet); row skipped", r.weight));
            continue;
        };
        let state = match r.state {
            0 => "active",
            1 => "inactive",
            2 => "probing",
            3 => "disabled",
            4 => "draining",
            other => {
                problems.push(format!("{key}: state {other} is not 0 (active), 1 (inactive) or 2 (probing); row skipped"));
                continue;
            }
        };
        if r.setid < 0 {
            problems.push(format!("{key}: setid {} is negative; row skipped", r.setid));
            continue;
        }
        match dest_from_parts(
            &key,
            &r.destination,
            weight,
            r.priority,
            r.attrs.as_deref().unwrap_or(""),
            r.description.as_deref().unwrap_or(""),
            state,
        ) {
            Ok(d) => {
                let set = match sets.iter_mut().position(|s| s.id == r.setid) {
                    Some(i) => &mut sets[i],
                    None => {
                        sets.push(SetConfig {
                            id: r.setid,
                            algorithm: Algorithm::RoundRobin,
                            hash_header: None,
                            destinations: Vec::new(),
                        });
                        sets.last_mut().expect("just pushed")
                    }
                };
                if set.destinations.iter().any(|o| o.uri == d.uri) {
                    problems.push(format!(
                        "{key}: {} is already in set {}; row skipped",
                        d.uri, r.setid
                    ));
                } else {
                    set.destinations.push(d);
                }
            }
            Err(e) => problems.push(format!("{e}; row skipped")),
        }
    }
    (sets, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, setid: i64, dest: &str, state: i64, weight: &str) -> store::DispatcherRow {
        store::DispatcherRow {
            id,
            setid,
            destination: dest.into(),
            socket: None,
            state,
            probe_mode: 0,
            weight: weight.into(),
            priority: 0,
            attrs: None,
            description: Some("d".into()),
        }
    }

    #[test]
    fn table_rows_become_sets_and_bad_rows_are_skipped_with_a_reason() {
        let configured = vec![SetConfig {
            id: 1,
            algorithm: Algorithm::HashCallId,
            hash_header: None,
            destinations: vec![],
        }];
        let rows = vec![
            row(1, 1, "sip:127.0.0.1:5080", 0, "2"),
            row(2, 1, "sip:127.0.0.1:5082", 4, "1"),
            row(3, 1, "sip:127.0.0.1:5084", 0, "fs://admin@127.0.0.1"),
            row(4, 1, "sip:no_such_host", 0, "1"),
            row(5, 1, "sip:127.0.0.1:5080", 0, "1"),
            row(6, 2, "sip:127.0.0.1:5090", 9, "1"),
            row(7, 3, "sip:127.0.0.1:5092", 1, "-1"),
            row(8, 5, "sip:127.0.0.1:5094", 2, "1"),
        ];
        let (sets, problems) = sets_from_rows(&rows, &configured);
        assert_eq!(sets.len(), 2, "set 1 (configured) and set 5 (table only)");
        assert_eq!(sets[0].algorithm, Algorithm::HashCallId);
        assert_eq!(sets[0].destinations.len(), 2);
        assert_eq!(
            (
                sets[0].destinations[0].weight,
                sets[0].destinations[1].state
            ),
            (2, DestState::Draining)
        );
        assert_eq!(
            (sets[1].id, sets[1].algorithm, sets[1].destinations[0].state),
            (5, Algorithm::RoundRobin, DestState::Probing)
        );
        assert_eq!(problems.len(), 5, "{problems:#?}");
        for (p, needle) in problems
            .iter()
            .zip(["row 3", "row 4", "row 5", "row 6", "row 7"])
        {
            assert!(p.contains(needle) && p.contains("skipped"), "{p}");
        }
    }
}

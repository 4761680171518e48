//! What happens to a dialled number (the declarative part of OpenSIPS' `alias_db_lookup`,
//! `dp_translate` and `do_routing`): per kind of sender (users, media servers, carriers), an
//! ordered list of routes, each with an optional dialplan translation, a prefix, a minimum
//! length and a target — carrier gateways by prefix, the location service, the media
//! servers, or a refusal. The tables (aliases, dialplan, drouting) reload atomically; the
//! gateways share the dispatcher's health records, so they are probed like its destinations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::dialplan::Dialplan;
use super::drouting::{Drouting, Gateway};
use crate::dispatcher::{DestState, Health, HealthBook};
use crate::types::{Destination, Transport};

/// Who sent an initial request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Anyone not below: registered users, softphones.
    Users,
    /// A dispatcher destination or balancer node.
    MediaServers,
    /// A carrier: its address is one of the gateways'.
    Carriers,
}

impl Sender {
    /// Parses `users`, `media-servers` or `carriers`.
    pub fn parse(s: &str) -> Option<Sender> {
        Some(match s {
            "users" => Sender::Users,
            "media-servers" => Sender::MediaServers,
            "carriers" => Sender::Carriers,
            _ => return None,
        })
    }
}

/// Where a route sends a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The carrier gateways of the drouting rule with the longest matching prefix in this
    /// group, tried in order; with `by_caller`, the caller's group from `dr_groups` (its
    /// From user and domain) when it has one (OpenSIPS `do_routing()` without a group).
    Carriers { group: i64, by_caller: bool },
    /// The registered user of that name (the location service).
    Location,
    /// The media servers (the dispatcher or balancer), as without number routing.
    MediaServers,
    /// A final refusal.
    Reject { code: u16, reason: String },
}

/// One route: the first whose sender, prefix and length match decides.
#[derive(Debug, Clone)]
pub struct NumberRoute {
    pub from: Vec<Sender>,
    /// Translate the number with this dialplan id first (a number no rule matches stays
    /// as it is).
    pub dialplan: Option<i64>,
    /// The (translated) number starts with this ("" matches every number).
    pub prefix: String,
    /// A matching number shorter than this is `484 Address Incomplete`.
    pub min_length: usize,
    pub to: Target,
}

/// The tables, swapped whole on reload.
#[derive(Debug, Default)]
pub struct NumberTables {
    pub dialplan: Dialplan,
    pub drouting: Drouting,
    /// `(alias user, alias domain)` → `(user, domain)`; an empty alias domain matches every
    /// domain.
    pub aliases: HashMap<(String, String), (String, String)>,
    /// `(user, domain)` → drouting group (`dr_groups`); an empty domain matches every domain.
    pub groups: HashMap<(String, String), i64>,
}

/// A gateway's live record: its health (shared with the dispatcher's probing) and counters.
#[derive(Debug)]
pub struct GwNode {
    pub gwid: String,
    pub health: Arc<Health>,
    /// Calls sent to it, and those it failed (timeout, failover reply, unreachable).
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
}

/// What to do with an initial request's number.
#[derive(Debug, Clone)]
pub enum NumberDecision {
    /// Go on as without number routing; `user`/`domain` replace the Request-URI's when
    /// an alias or a translation changed them.
    Continue {
        user: Option<String>,
        domain: Option<String>,
        /// To the location service only (the route said so, or an alias named a user).
        location: bool,
    },
    /// To these gateways, in order (each candidate's URI is its Request-URI).
    Gateways(Vec<Destination>),
    /// A final response.
    Reject(u16, String),
}

impl PartialEq for NumberDecision {
    fn eq(&self, other: &Self) -> bool {
        use NumberDecision::*;
        match (self, other) {
            (
                Continue {
                    user: a,
                    domain: b,
                    location: c,
                },
                Continue {
                    user: x,
                    domain: y,
                    location: z,
                },
            ) => a == x && b == y && c == z,
            (Gateways(a), Gateways(b)) => a.iter().map(|d| &d.uri).eq(b.iter().map(|d| &d.uri)),
            (Reject(a, b), Reject(x, y)) => a == x && b == y,
            _ => false,
        }
    }
}

/// Number routing: the routes of the configuration and the reloadable tables.
#[derive(Debug)]
pub struct Numbers {
    routes: Vec<NumberRoute>,
    tables: RwLock<Arc<NumberTables>>,
    gws: RwLock<Arc<HashMap<String, Arc<GwNode>>>>,
    book: Arc<HealthBook>,
    /// Consecutive failures that take a gateway down, answers that bring it back.
    pub threshold_down: u32,
    pub threshold_up: u32,
}

/// A gateway's address as a URI: `10.0.0.5:5060`, `carrier.example.net` or a `sip:` URI.
fn gateway_uri(address: &str) -> String {
    if address.starts_with("sip:") || address.starts_with("sips:") {
        address.to_string()
    } else {
        format!("sip:{address}")
    }
}

impl Numbers {
    /// Number routing with `routes`; gateways take their health from `book`.
    pub fn new(routes: Vec<NumberRoute>, book: Arc<HealthBook>) -> Numbers {
        Numbers {
            routes,
            tables: RwLock::new(Arc::new(NumberTables::default())),
            gws: RwLock::new(Arc::new(HashMap::new())),
            book,
            threshold_down: 1,
            threshold_up: 1,
        }
    }

    /// The tables in use.
    pub fn tables(&self) -> Arc<NumberTables> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The gateways' live records, by gwid.
    pub fn gateways(&self) -> Arc<HashMap<String, Arc<GwNode>>> {
        self.gws.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in new tables. A gateway that stays keeps its health and counters; gateways
    /// given by IP address are probed with the dispatcher's destinations.
    pub fn reload(&self, t: NumberTables) {
        let old = self.gateways();
        let mut gws = HashMap::new();
        for g in t.drouting.gateways() {
            let state = if g.enabled {
                DestState::Active
            } else {
                DestState::Disabled
            };
            let node = match old.get(&g.gwid) {
                Some(n) if n.health.uri.as_ref() == gateway_uri(&g.address) => n.clone(),
                _ => {
                    let uri = gateway_uri(&g.address);
                    let (transport, addr) = match Destination::from_uri(&uri) {
                        Ok(d) if d.name.is_none() => (d.transport, d.addr),
                        // a name's addresses are known per call only: not probed
                        _ => (Transport::Udp, ([0, 0, 0, 0], 0).into()),
                    };
                    let health = if addr.ip().is_unspecified() {
                        Arc::new(Health::new(uri.clone().into(), transport, addr, state))
                    } else {
                        self.book.get(&uri.clone().into(), transport, addr, state)
                    };
                    Arc::new(GwNode {
                        gwid: g.gwid.clone(),
                        health,
                        attempts: AtomicU64::new(0),
                        failures: AtomicU64::new(0),
                    })
                }
            };
            // the table's state column rules: a disabled row stays off
            if !g.enabled {
                node.health.set_state(DestState::Disabled);
            } else if node.health.state() == DestState::Disabled {
                node.health.set_state(DestState::Active);
            }
            gws.insert(g.gwid.clone(), node);
        }
        self.book.set_extra(
            "gateways",
            gws.values()
                .filter(|n| !n.health.addr.ip().is_unspecified())
                .map(|n| n.health.clone())
                .collect(),
        );
        *self.gws.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gws);
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
    }

    /// True when `ip` is a gateway's address (the request comes from a carrier, OpenSIPS'
    /// `is_from_gw`).
    pub fn is_gateway(&self, ip: std::net::IpAddr) -> bool {
        self.gateways()
            .values()
            .any(|g| g.health.addr.ip() == ip && !ip.is_unspecified())
    }

    /// Sets a gateway's state (`dr_gw_status`).
    pub fn set_gateway_state(&self, gwid: &str, s: DestState) -> Result<(), crate::Error> {
        let g = self.gateways();
        let n = g
            .get(gwid)
            .ok_or_else(|| crate::Error::NotFound(format!("no gateway {gwid}")))?;
        n.health.set_state(s);
        Ok(())
    }

    /// Decides for an initial request from `from` (the caller `caller` = From user and
    /// domain) to `user@domain`; `rand` orders weighted carriers (the caller's random number).
    pub fn decide(
        &self,
        from: Sender,
        caller: (&str, &str),
        user: &str,
        domain: &str,
        rand: u64,
    ) -> NumberDecision {
        let t = self.tables();
        // the map wants owned keys: build them only when there are aliases
        let alias = (!t.aliases.is_empty())
            .then(|| {
                t.aliases
                    .get(&(user.to_string(), domain.to_ascii_lowercase()))
                    .or_else(|| t.aliases.get(&(user.to_string(), String::new())))
            })
            .flatten();
        if let Some((u, d)) = alias {
            return NumberDecision::Continue {
                user: Some(u.clone()),
                domain: (!d.is_empty()).then(|| d.clone()),
                location: true,
            };
        }
        for r in self.routes.iter().filter(|r| r.from.contains(&from)) {
            let number = match r.dialplan {
                Some(dpid) => t
                    .dialplan
                    .translate(dpid, user)
                    .map_or_else(|| user.to_string(), |tr| tr.output),
                None => user.to_string(),
            };
            if !number.starts_with(r.prefix.as_str()) {
                continue;
            }
            if number.len() < r.min_length {
                return NumberDecision::Reject(
                    484,
                    format!(
                        "Address Incomplete ({number} is shorter than {} digits)",
                        r.min_length
                    ),
                );
            }
            let changed = (number != user).then(|| number.clone());
            return match &r.to {
                Target::Location => NumberDecision::Continue {
                    user: changed,
                    domain: None,
                    location: true,
                },
                Target::MediaServers => NumberDecision::Continue {
                    user: changed,
                    domain: None,
                    location: false,
                },
                Target::Reject { code, reason } => NumberDecision::Reject(*code, reason.clone()),
                Target::Carriers { group, by_caller } => {
                    let g = if *by_caller {
                        let (u, d) = (caller.0.to_string(), caller.1.to_ascii_lowercase());
                        t.groups
                            .get(&(u.clone(), d))
                            .or_else(|| t.groups.get(&(u, String::new())))
                            .copied()
                            .unwrap_or(*group)
                    } else {
                        *group
                    };
                    self.to_gateways(&t, g, &number, rand)
                }
            };
        }
        NumberDecision::Continue {
            user: None,
            domain: None,
            location: false,
        }
    }

    fn to_gateways(&self, t: &NumberTables, group: i64, number: &str, rand: u64) -> NumberDecision {
        let Some(route) = t.drouting.route(group, number, rand) else {
            return NumberDecision::Reject(
                404,
                format!("Not Found (no carrier route for {number} in group {group})"),
            );
        };
        let gws = self.gateways();
        let mut out = Vec::with_capacity(route.gateways.len());
        for g in &route.gateways {
            let node = gws.get(&g.gwid);
            if node.is_some_and(|n| !n.health.selectable()) {
                continue;
            }
            if let Some(d) = gateway_destination(g, number, node) {
                out.push(d);
            }
        }
        // a gateway that failed last comes after the others
        out.sort_by_key(|d| {
            d.node
                .as_ref()
                .and_then(|n| n.downcast_ref::<GwNode>())
                .is_some_and(|n| n.health.suspect())
        });
        if out.is_empty() {
            return NumberDecision::Reject(
                503,
                format!(
                    "Service Unavailable (every gateway of rule {} for {number} is down)",
                    route.rule
                ),
            );
        }
        NumberDecision::Gateways(out)
    }

    /// A call to a gateway got an answer (`ok`) or failed.
    pub fn on_branch_result(&self, dest: &Destination, ok: bool) {
        let Some(n) = dest.node.as_ref().and_then(|n| n.downcast_ref::<GwNode>()) else {
            return;
        };
        n.attempts.fetch_add(1, Ordering::Relaxed);
        let t = if ok {
            n.health.record_success(self.threshold_up)
        } else {
            n.failures.fetch_add(1, Ordering::Relaxed);
            n.health.record_failure(self.threshold_down)
        };
        if let Some(t) = t {
            tracing::warn!(
                gateway = n.gwid,
                from = t.from.as_str(),
                to = t.to.as_str(),
                "carrier gateway state changed by traffic"
            );
        }
    }

    /// Prometheus lines per gateway.
    pub fn metrics_text(&self) -> String {
        let gws = self.gateways();
        let mut ids: Vec<&String> = gws.keys().collect();
        ids.sort();
        let mut s = String::from(
            "# HELP switchboard_dr_gateway_up 1 when the carrier gateway takes calls\n# TYPE switchboard_dr_gateway_up gauge\n",
        );
        for id in &ids {
            let n = &gws[*id];
            s.push_str(&format!(
                "switchboard_dr_gateway_up{{gwid=\"{id}\",state=\"{}\"}} {}\n",
                n.health.state().as_str(),
                n.health.selectable() as u8
            ));
        }
        s.push_str("# HELP switchboard_dr_gateway_attempts_total calls sent to the carrier gateway\n# TYPE switchboard_dr_gateway_attempts_total counter\n");
        for id in &ids {
            s.push_str(&format!(
                "switchboard_dr_gateway_attempts_total{{gwid=\"{id}\"}} {}\n",
                gws[*id].attempts.load(Ordering::Relaxed)
            ));
        }
        s.push_str("# HELP switchboard_dr_gateway_failures_total calls the carrier gateway failed (timeout, failover reply, unreachable)\n# TYPE switchboard_dr_gateway_failures_total counter\n");
        for id in &ids {
            s.push_str(&format!(
                "switchboard_dr_gateway_failures_total{{gwid=\"{id}\"}} {}\n",
                gws[*id].failures.load(Ordering::Relaxed)
            ));
        }
        s
    }
}

/// The candidate for `g`: its address, the number as it wants it in the Request-URI.
fn gateway_destination(
    g: &Gateway,
    number: &str,
    node: Option<&Arc<GwNode>>,
) -> Option<Destination> {
    let base = gateway_uri(&g.address);
    let mut d = Destination::from_uri(&base).ok()?;
    let (scheme, rest) = base.split_once(':')?;
    d.uri = format!("{scheme}:{}@{rest}", g.rewrite(number)).into();
    d.node = node.map(|n| n.clone() as crate::NodeRef);
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numbers::dialplan::DpRow;
    use crate::numbers::drouting::{CarrierRow, GatewayRow, RuleRow};

    fn numbers() -> Numbers {
        let routes = vec![
            NumberRoute {
                from: vec![Sender::Users, Sender::MediaServers],
                dialplan: Some(1),
                prefix: "+".into(),
                min_length: 8,
                to: Target::Carriers {
                    group: 0,
                    by_caller: true,
                },
            },
            NumberRoute {
                from: vec![Sender::Users],
                dialplan: None,
                prefix: "9".into(),
                min_length: 0,
                to: Target::Reject {
                    code: 403,
                    reason: "Forbidden (premium numbers)".into(),
                },
            },
            NumberRoute {
                from: vec![Sender::Users, Sender::MediaServers, Sender::Carriers],
                dialplan: None,
                prefix: "1".into(),
                min_length: 4,
                to: Target::Location,
            },
        ];
        let n = Numbers::new(routes, Arc::new(HealthBook::default()));
        let gw = |id: i64, gwid: &str, addr: &str| GatewayRow {
            id,
            gwid: gwid.into(),
            address: addr.into(),
            ..GatewayRow::default()
        };
        let (drouting, problems) = Drouting::build(
            &[
                gw(1, "de1", "127.0.0.5:5060"),
                gw(2, "de2", "127.0.0.6:5060"),
                gw(3, "us1", "sip:carrier.example.net;transport=tcp"),
            ],
            &[CarrierRow {
                id: 1,
                carrierid: "de".into(),
                gwlist: "de1,de2".into(),
                ..CarrierRow::default()
            }],
            &[
                RuleRow {
                    ruleid: 1,
                    groupid: "0".into(),
                    prefix: "+49".into(),
                    gwlist: "#de".into(),
                    ..RuleRow::default()
                },
                RuleRow {
                    ruleid: 2,
                    groupid: "0".into(),
                    prefix: "+1".into(),
                    gwlist: "us1".into(),
                    ..RuleRow::default()
                },
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let (dialplan, problems) = Dialplan::build(&[DpRow {
            id: 1,
            dpid: 1,
            match_op: 1,
            match_exp: "^0([1-9][0-9]+)$".into(),
            subst_exp: "^0([1-9][0-9]+)$".into(),
            repl_exp: "+49\\1".into(),
            ..DpRow::default()
        }]);
        assert!(problems.is_empty(), "{problems:?}");
        let mut aliases = HashMap::new();
        aliases.insert(
            ("sales".into(), String::new()),
            ("1000".into(), String::new()),
        );
        let mut groups = HashMap::new();
        groups.insert(("vip".to_string(), String::new()), 7);
        n.reload(NumberTables {
            dialplan,
            drouting,
            aliases,
            groups,
        });
        n
    }

    fn uris(d: &NumberDecision) -> Vec<String> {
        match d {
            NumberDecision::Gateways(v) => v.iter().map(|d| d.uri.to_string()).collect(),
            other => panic!("not gateways: {other:?}"),
        }
    }

    #[test]
    fn a_national_number_is_translated_then_routed_to_its_carrier_in_order() {
        let n = numbers();
        let d = n.decide(Sender::Users, ("a", "x"), "03012345678", "example.test", 0);
        assert_eq!(
            uris(&d),
            [
                "sip:+493012345678@127.0.0.5:5060",
                "sip:+493012345678@127.0.0.6:5060"
            ]
        );
        // a name as gateway address is a name destination
        match n.decide(Sender::MediaServers, ("a", "x"), "+12125550100", "x", 0) {
            NumberDecision::Gateways(v) => {
                assert_eq!(
                    &*v[0].uri,
                    "sip:+12125550100@carrier.example.net;transport=tcp"
                );
                assert!(v[0].name.is_some());
                assert_eq!(v[0].transport, Transport::Tcp);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_unrouted_and_forbidden_numbers_get_clear_refusals() {
        let n = numbers();
        assert!(matches!(
            n.decide(Sender::Users, ("a", "x"), "+4930", "x", 0),
            NumberDecision::Reject(484, _)
        ));
        match n.decide(Sender::Users, ("a", "x"), "+33123456789", "x", 0) {
            NumberDecision::Reject(404, r) => assert!(r.contains("+33123456789"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            n.decide(Sender::Users, ("a", "x"), "9001", "x", 0),
            NumberDecision::Reject(403, _)
        ));
        // carriers' calls to 9... are not users' routes: on as before
        assert_eq!(
            n.decide(Sender::Carriers, ("a", "x"), "9001", "x", 0),
            NumberDecision::Continue {
                user: None,
                domain: None,
                location: false
            }
        );
    }

    #[test]
    fn an_alias_reaches_its_subscriber_and_local_numbers_go_to_the_location_service() {
        let n = numbers();
        assert_eq!(
            n.decide(Sender::Carriers, ("a", "x"), "sales", "example.test", 0),
            NumberDecision::Continue {
                user: Some("1000".into()),
                domain: None,
                location: true
            }
        );
        assert_eq!(
            n.decide(Sender::Users, ("a", "x"), "1001", "example.test", 0),
            NumberDecision::Continue {
                user: None,
                domain: None,
                location: true
            }
        );
    }

    #[test]
    fn a_failed_gateway_goes_down_and_the_next_one_takes_the_calls() {
        let n = numbers();
        let first = match n.decide(Sender::Users, ("a", "x"), "+493012345678", "x", 0) {
            NumberDecision::Gateways(v) => v[0].clone(),
            other => panic!("{other:?}"),
        };
        n.on_branch_result(&first, false);
        let gws = n.gateways();
        assert_eq!(gws["de1"].health.state(), DestState::Inactive);
        assert_eq!(gws["de1"].failures.load(Ordering::Relaxed), 1);
        assert_eq!(
            uris(&n.decide(Sender::Users, ("a", "x"), "+493012345678", "x", 0)),
            ["sip:+493012345678@127.0.0.6:5060"]
        );
        // both down: 503 naming the rule
        n.set_gateway_state("de2", DestState::Disabled).unwrap();
        assert!(matches!(
            n.decide(Sender::Users, ("a", "x"), "+493012345678", "x", 0),
            NumberDecision::Reject(503, _)
        ));
        assert!(n.set_gateway_state("nope", DestState::Active).is_err());
        assert!(n.is_gateway("127.0.0.5".parse().unwrap()));
        assert!(!n.is_gateway("127.0.0.9".parse().unwrap()));
        let m = n.metrics_text();
        assert!(
            m.contains("switchboard_dr_gateway_up{gwid=\"de1\",state=\"inactive\"} 0"),
            "{m}"
        );
        // probing sees the gateways given by address
        assert_eq!(n.book.extra().len(), 2);
    }

    #[test]
    fn a_caller_in_dr_groups_takes_its_groups_routes() {
        let n = numbers();
        // group 7 has no rule for +49: the vip caller gets 404 where others get carriers
        assert!(matches!(
            n.decide(Sender::Users, ("vip", "x"), "+493012345678", "x", 0),
            NumberDecision::Reject(404, _)
        ));
        assert!(matches!(
            n.decide(Sender::Users, ("joe", "x"), "+493012345678", "x", 0),
            NumberDecision::Gateways(_)
        ));
    }

    #[test]
    fn a_reload_keeps_the_health_of_gateways_that_stay() {
        let n = numbers();
        n.set_gateway_state("de2", DestState::Inactive).unwrap();
        let t = n.tables();
        let (drouting, _) = Drouting::build(
            &[GatewayRow {
                id: 2,
                gwid: "de2".into(),
                address: "127.0.0.6:5060".into(),
                ..GatewayRow::default()
            }],
            &[],
            &[],
        );
        n.reload(NumberTables {
            dialplan: Dialplan::default(),
            drouting,
            aliases: t.aliases.clone(),
            groups: HashMap::new(),
        });
        assert_eq!(n.gateways()["de2"].health.state(), DestState::Inactive);
        assert_eq!(n.gateways().len(), 1);
    }
}

//! Prefix routing to carriers (OpenSIPS `drouting`): gateways, carriers (ordered or weighted
//! lists of gateways), and rules (groups, a number prefix, a priority, a list of gateways
//! and carriers). A number takes the rules of its group with the longest matching prefix,
//! the highest priority among them, and yields the gateways to try in order (failover).
//!
//! Lookups are one hash probe per prefix length of the number (at most its length), whatever
//! the rule count. Tables are hostile until checked: a bad row is reported and skipped.

use std::collections::HashMap;

/// `dr_gateways` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayRow {
    pub id: i64,
    pub gwid: String,
    pub gw_type: i64,
    /// `IP[:port]`, `host[:port]` or a `sip:` URI.
    pub address: String,
    /// Leading digits taken off the number before it is sent.
    pub strip: i64,
    /// Prepended to the number (after `strip`).
    pub pri_prefix: String,
    pub attrs: String,
    pub probe_mode: i64,
    /// 0 active, 1 disabled.
    pub state: i64,
    pub description: String,
}

/// `dr_carriers` row (OpenSIPS 3, table version 3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarrierRow {
    pub id: i64,
    pub carrierid: String,
    /// `gw1,gw2` or, with weights, `gw1=70,gw2=30`.
    pub gwlist: String,
    /// 0x1 only the first gateway, 0x2 disabled.
    pub flags: i64,
    /// `W`: order the gateways by weight; `O` (or empty): as listed. (`Q`, quality-based
    /// ordering from OpenSIPS' qrouting, is refused.)
    pub sort_alg: String,
    /// 0 active, 1 disabled.
    pub state: i64,
    pub attrs: String,
    pub description: String,
}

/// `dr_rules` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleRow {
    pub ruleid: i64,
    /// `1` or `1,2`.
    pub groupid: String,
    /// Digits (and a leading `+`); empty: every number.
    pub prefix: String,
    pub timerec: String,
    /// Higher first.
    pub priority: i64,
    /// `gw1,#carrier1,gw2`.
    pub gwlist: String,
    pub attrs: String,
    pub description: String,
}

/// A gateway to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub gwid: String,
    pub address: String,
    pub strip: usize,
    pub pri_prefix: String,
    pub attrs: String,
    pub enabled: bool,
}

impl Gateway {
    /// The number as this gateway wants it: `strip` digits off, `pri_prefix` in front.
    pub fn rewrite(&self, number: &str) -> String {
        let kept = number.get(self.strip.min(number.len())..).unwrap_or("");
        format!("{}{kept}", self.pri_prefix)
    }
}

#[derive(Debug, Clone)]
enum Hop {
    Gw(usize),
    Carrier(usize),
}

#[derive(Debug)]
struct Carrier {
    gws: Vec<(usize, u32)>,
    weighted: bool,
    first_only: bool,
    enabled: bool,
}

#[derive(Debug)]
struct Rule {
    id: i64,
    priority: i64,
    order: usize,
    hops: Vec<Hop>,
    attrs: String,
}

/// The routing tables, built once per reload.
#[derive(Debug, Default)]
pub struct Drouting {
    gateways: Vec<Gateway>,
    carriers: Vec<Carrier>,
    rules: Vec<Rule>,
    /// group → prefix → rules, best first (looked up by `&str`: no allocation per probe).
    index: HashMap<i64, HashMap<Box<str>, Vec<usize>>>,
    /// Longest prefix of any rule per group: where the lookup starts.
    longest: HashMap<i64, usize>,
}

/// The rule a number matched and the gateways to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub rule: i64,
    pub prefix: String,
    pub attrs: String,
    pub gateways: Vec<Gateway>,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn valid_prefix(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    s.len() <= 32
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
        && s != "+"
}

fn valid_address(s: &str) -> bool {
    let a = s
        .strip_prefix("sips:")
        .or_else(|| s.strip_prefix("sip:"))
        .unwrap_or(s);
    !a.is_empty()
        && a.len() <= 255
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[];=_".contains(&b))
}

/// `a=70,b` → [("a", Some(70)), ("b", None)].
fn list(s: &str) -> Result<Vec<(&str, Option<u32>)>, String> {
    let mut out = Vec::new();
    for part in s.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = match part.split_once('=') {
            Some((n, w)) => (
                n.trim(),
                Some(
                    w.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|w| *w <= 1_000_000)
                        .ok_or_else(|| format!("{part:?}: the weight must be 0-1000000"))?,
                ),
            ),
            None => (part, None),
        };
        out.push((name, w));
    }
    Ok(out)
}

impl Drouting {
    /// Builds the tables; every row that cannot be used is skipped and reported (a rule that
    /// names a skipped gateway keeps its other hops).
    pub fn build(
        gws: &[GatewayRow],
        carriers: &[CarrierRow],
        rules: &[RuleRow],
    ) -> (Drouting, Vec<String>) {
        let mut dr = Drouting::default();
        let mut problems = Vec::new();
        let mut gw_by_id: HashMap<&str, usize> = HashMap::new();
        for g in gws {
            let why = if !valid_id(&g.gwid) {
                Some(format!("gwid {:?}: letters, digits, - _ . (1-64)", g.gwid))
            } else if gw_by_id.contains_key(g.gwid.as_str()) {
                Some(format!("gwid {} given twice", g.gwid))
            } else if !valid_address(&g.address) {
                Some(format!(
                    "address {:?} is not a host[:port] or sip: URI",
                    g.address
                ))
            } else if !(0..=32).contains(&g.strip) {
                Some(format!("strip {}: 0-32", g.strip))
            } else if !g.pri_prefix.is_empty() && !valid_prefix(&g.pri_prefix) {
                Some(format!(
                    "pri_prefix {:?}: digits, * # and a leading +",
                    g.pri_prefix
                ))
            } else {
                None
            };
            if let Some(w) = why {
                problems.push(format!("dr_gateways row {}: {w}", g.id));
                continue;
            }
            gw_by_id.insert(&g.gwid, dr.gateways.len());
            dr.gateways.push(Gateway {
                gwid: g.gwid.clone(),
                address: g.address.clone(),
                strip: g.strip as usize,
                pri_prefix: g.pri_prefix.clone(),
                attrs: g.attrs.clone(),
                enabled: g.state == 0,
            });
        }
        let mut carrier_by_id: HashMap<&str, usize> = HashMap::new();
        for c in carriers {
            let built = (|| {
                if !valid_id(&c.carrierid) {
                    return Err(format!(
                        "carrierid {:?}: letters, digits, - _ . (1-64)",
                        c.carrierid
                    ));
                }
                if carrier_by_id.contains_key(c.carrierid.as_str()) {
                    return Err(format!("carrierid {} given twice", c.carrierid));
                }
                let mut out = Vec::new();
                for (name, w) in list(&c.gwlist)? {
                    let gi = *gw_by_id
                        .get(name)
                        .ok_or_else(|| format!("gwlist names {name:?}, no such gateway"))?;
                    out.push((gi, w.unwrap_or(1)));
                }
                if out.is_empty() {
                    return Err("gwlist is empty".into());
                }
                let weighted = match c.sort_alg.trim() {
                    "" | "O" | "o" | "0" | "N" | "n" => false,
                    "W" | "w" => true,
                    other => {
                        return Err(format!(
                            "sort_alg {other:?}: O (as listed) or W (by weight)"
                        ))
                    }
                };
                Ok(Carrier {
                    gws: out,
                    weighted,
                    first_only: c.flags & 1 != 0,
                    enabled: c.state == 0 && c.flags & 2 == 0,
                })
            })();
            match built {
                Ok(car) => {
                    carrier_by_id.insert(&c.carrierid, dr.carriers.len());
                    dr.carriers.push(car);
                }
                Err(w) => problems.push(format!("dr_carriers row {}: {w}", c.id)),
            }
        }
        for (order, r) in rules.iter().enumerate() {
            let built = (|| {
                if !r.timerec.trim().is_empty() {
                    return Err(
                        "timerec: time windows are not supported yet (the rule would route outside its window)"
                            .to_string(),
                    );
                }
                if !valid_prefix(&r.prefix) {
                    return Err(format!(
                        "prefix {:?}: digits, * # and a leading +",
                        r.prefix
                    ));
                }
                let mut groups = Vec::new();
                for g in r
                    .groupid
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                {
                    groups.push(g.parse::<i64>().map_err(|_| {
                        format!("groupid {:?}: integers, comma-separated", r.groupid)
                    })?);
                }
                if groups.is_empty() {
                    return Err("groupid is empty".into());
                }
                let mut hops = Vec::new();
                for (name, _) in list(&r.gwlist)? {
                    hops.push(match name.strip_prefix('#') {
                        Some(c) => Hop::Carrier(*carrier_by_id.get(c).ok_or_else(|| {
                            format!("gwlist names carrier {c:?}, no such carrier")
                        })?),
                        None => Hop::Gw(
                            *gw_by_id
                                .get(name)
                                .ok_or_else(|| format!("gwlist names {name:?}, no such gateway"))?,
                        ),
                    });
                }
                if hops.is_empty() {
                    return Err("gwlist is empty".into());
                }
                Ok((groups, hops))
            })();
            let (groups, hops) = match built {
                Ok(v) => v,
                Err(w) => {
                    problems.push(format!("dr_rules row {}: {w}", r.ruleid));
                    continue;
                }
            };
            let idx = dr.rules.len();
            dr.rules.push(Rule {
                id: r.ruleid,
                priority: r.priority,
                order,
                hops,
                attrs: r.attrs.clone(),
            });
            for g in groups {
                dr.index
                    .entry(g)
                    .or_default()
                    .entry(r.prefix.as_str().into())
                    .or_default()
                    .push(idx);
                let l = dr.longest.entry(g).or_insert(0);
                *l = (*l).max(r.prefix.len());
            }
        }
        let rules = &dr.rules;
        for v in dr.index.values_mut().flat_map(|m| m.values_mut()) {
            v.sort_by_key(|&i| (std::cmp::Reverse(rules[i].priority), rules[i].order));
        }
        (dr, problems)
    }

    /// Rules loaded.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The gateways.
    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// `do_routing(group)` for `number`: the longest matching prefix, its best rule, and the
    /// enabled gateways in the order to try them. `rand` orders weighted carriers (the
    /// caller's random number: the module reads no clock and no RNG).
    pub fn route(&self, group: i64, number: &str, rand: u64) -> Option<Route> {
        let longest = (*self.longest.get(&group)?).min(number.len());
        let index = self.index.get(&group)?;
        for len in (0..=longest).rev() {
            let Some(p) = number.get(..len) else { continue };
            let Some(rules) = index.get(p) else {
                continue;
            };
            for &ri in rules {
                let r = &self.rules[ri];
                let gws = self.expand(&r.hops, rand);
                if !gws.is_empty() {
                    return Some(Route {
                        rule: r.id,
                        prefix: p.to_string(),
                        attrs: r.attrs.clone(),
                        gateways: gws,
                    });
                }
            }
        }
        None
    }

    fn expand(&self, hops: &[Hop], mut rand: u64) -> Vec<Gateway> {
        let mut out: Vec<Gateway> = Vec::new();
        let push = |gi: usize, out: &mut Vec<Gateway>| {
            let g = &self.gateways[gi];
            if g.enabled && !out.iter().any(|o| o.gwid == g.gwid) {
                out.push(g.clone());
            }
        };
        for h in hops {
            match *h {
                Hop::Gw(gi) => push(gi, &mut out),
                Hop::Carrier(ci) => {
                    let c = &self.carriers[ci];
                    if !c.enabled {
                        continue;
                    }
                    let mut order: Vec<usize> = c.gws.iter().map(|(g, _)| *g).collect();
                    if c.weighted {
                        // weighted random order without replacement
                        let mut left: Vec<(usize, u64)> =
                            c.gws.iter().map(|(g, w)| (*g, *w as u64)).collect();
                        order.clear();
                        while !left.is_empty() {
                            let total: u64 = left.iter().map(|l| l.1).sum();
                            let pick = if total == 0 {
                                0
                            } else {
                                rand = rand
                                    .wrapping_mul(6364136223846793005)
                                    .wrapping_add(1442695040888963407);
                                let mut x = (rand >> 33) % total;
                                left.iter()
                                    .position(|l| {
                                        if x < l.1 {
                                            true
                                        } else {
                                            x -= l.1;
                                            false
                                        }
                                    })
                                    .unwrap_or(0)
                            };
                            order.push(left.remove(pick).0);
                        }
                    }
                    if c.first_only {
                        // the first enabled one only
                        if let Some(&g) = order.iter().find(|&&g| self.gateways[g].enabled) {
                            push(g, &mut out);
                        }
                    } else {
                        for g in order {
                            push(g, &mut out);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: i64, name: &str, addr: &str) -> GatewayRow {
        GatewayRow {
            id,
            gwid: name.into(),
            address: addr.into(),
            ..GatewayRow::default()
        }
    }

    fn rule(id: i64, group: &str, prefix: &str, pri: i64, list: &str) -> RuleRow {
        RuleRow {
            ruleid: id,
            groupid: group.into(),
            prefix: prefix.into(),
            priority: pri,
            gwlist: list.into(),
            ..RuleRow::default()
        }
    }

    fn tables() -> Drouting {
        let (dr, p) = Drouting::build(
            &[
                gw(1, "de1", "10.0.1.1:5060"),
                gw(2, "de2", "10.0.1.2:5060"),
                GatewayRow {
                    strip: 1,
                    pri_prefix: "00".into(),
                    ..gw(3, "uk1", "10.0.2.1")
                },
                GatewayRow {
                    state: 1,
                    ..gw(4, "off", "10.0.9.9")
                },
                gw(5, "any", "sip:gw.example.net;transport=tcp"),
            ],
            &[CarrierRow {
                id: 1,
                carrierid: "germany".into(),
                gwlist: "de1,de2".into(),
                ..CarrierRow::default()
            }],
            &[
                rule(1, "1", "+49", 0, "#germany"),
                rule(2, "1", "+4930", 0, "off,de2"),
                rule(3, "1", "+44", 0, "uk1"),
                rule(4, "1,2", "", 0, "any"),
                rule(5, "1", "+44", 9, "off"),
            ],
        );
        assert!(p.is_empty(), "{p:?}");
        dr
    }

    fn ids(r: &Route) -> Vec<&str> {
        r.gateways.iter().map(|g| g.gwid.as_str()).collect()
    }

    #[test]
    fn the_longest_prefix_wins_then_priority_and_disabled_gateways_are_skipped() {
        let dr = tables();
        let r = dr.route(1, "+4989123", 0).unwrap();
        assert_eq!(
            (r.rule, r.prefix.as_str(), ids(&r)),
            (1, "+49", vec!["de1", "de2"])
        );
        let r = dr.route(1, "+4930123", 0).unwrap();
        assert_eq!(
            (r.rule, ids(&r)),
            (2, vec!["de2"]),
            "longer prefix; the disabled gw left out"
        );
        // +44: rule 5 has the higher priority but only a disabled gateway: rule 3
        let r = dr.route(1, "+44207", 0).unwrap();
        assert_eq!((r.rule, ids(&r)), (3, vec!["uk1"]));
        assert_eq!(r.gateways[0].rewrite("+44207"), "0044207");
        let r = dr.route(1, "+1212", 0).unwrap();
        assert_eq!(
            (r.rule, ids(&r)),
            (4, vec!["any"]),
            "the empty prefix catches the rest"
        );
        assert_eq!(
            dr.route(2, "+4989", 0).unwrap().rule,
            4,
            "rule 4 is in group 2 too"
        );
        assert!(dr.route(3, "+4989", 0).is_none(), "no rules in group 3");
        assert_eq!(dr.route(1, "", 0).unwrap().rule, 4);
    }

    #[test]
    fn weighted_carriers_spread_by_weight_and_first_only_takes_one() {
        let gws = [
            gw(1, "a", "10.0.0.1"),
            gw(2, "b", "10.0.0.2"),
            gw(3, "c", "10.0.0.3"),
        ];
        let (dr, p) = Drouting::build(
            &gws,
            &[
                CarrierRow {
                    id: 1,
                    carrierid: "w".into(),
                    gwlist: "a=80,b=20".into(),
                    sort_alg: "W".into(),
                    ..CarrierRow::default()
                },
                CarrierRow {
                    id: 2,
                    carrierid: "one".into(),
                    gwlist: "c,a".into(),
                    flags: 1,
                    ..CarrierRow::default()
                },
            ],
            &[rule(1, "1", "1", 0, "#w"), rule(2, "1", "2", 0, "#one")],
        );
        assert!(p.is_empty(), "{p:?}");
        let mut first_a = 0;
        for i in 0..1000u64 {
            let r = dr
                .route(1, "123", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .unwrap();
            assert_eq!(r.gateways.len(), 2, "both, as failover");
            first_a += (r.gateways[0].gwid == "a") as u32;
        }
        assert!((720..=880).contains(&first_a), "80 % first: {first_a}");
        assert_eq!(ids(&dr.route(1, "2", 7).unwrap()), vec!["c"]);
        // a disabled carrier (flags 0x2, or state 1) gives no gateway: the rule is passed over
        for (flags, state) in [(2, 0), (0, 1)] {
            let (dr, _) = Drouting::build(
                &gws,
                &[CarrierRow {
                    id: 1,
                    carrierid: "off".into(),
                    gwlist: "a".into(),
                    flags,
                    state,
                    ..CarrierRow::default()
                }],
                &[rule(1, "1", "1", 5, "#off"), rule(2, "1", "1", 0, "b")],
            );
            assert_eq!(ids(&dr.route(1, "1", 0).unwrap()), vec!["b"]);
        }
    }

    #[test]
    fn hostile_rows_are_reported_and_skipped() {
        let (dr, p) = Drouting::build(
            &[
                gw(1, "ok", "10.0.0.1"),
                gw(2, "ok", "10.0.0.2"),
                gw(3, "bad id!", "10.0.0.3"),
                gw(4, "sp", "10.0.0.4 x"),
                GatewayRow {
                    strip: 99,
                    ..gw(5, "strip", "10.0.0.5")
                },
                GatewayRow {
                    pri_prefix: "0a".into(),
                    ..gw(6, "pp", "10.0.0.6")
                },
            ],
            &[
                CarrierRow {
                    id: 1,
                    carrierid: "c".into(),
                    gwlist: "ok,ghost".into(),
                    ..CarrierRow::default()
                },
                CarrierRow {
                    id: 2,
                    carrierid: "w".into(),
                    gwlist: "ok=-1".into(),
                    ..CarrierRow::default()
                },
                CarrierRow {
                    id: 3,
                    carrierid: "q".into(),
                    gwlist: "ok".into(),
                    sort_alg: "Q".into(),
                    ..CarrierRow::default()
                },
            ],
            &[
                rule(1, "1", "+49x", 0, "ok"),
                rule(2, "x", "1", 0, "ok"),
                rule(3, "1", "1", 0, "#nope"),
                rule(4, "1", "1", 0, ""),
                RuleRow {
                    timerec: "20040101T083000|10H|weekly|||MO".into(),
                    ..rule(5, "1", "2", 0, "ok")
                },
                rule(6, "1", &"1".repeat(40), 0, "ok"),
                rule(7, "1", "12", 0, "ok"),
            ],
        );
        assert_eq!(dr.rule_count(), 1, "{p:#?}");
        for want in [
            "dr_gateways row 2: gwid ok given twice",
            "dr_gateways row 3: gwid",
            "dr_gateways row 4: address",
            "dr_gateways row 5: strip 99",
            "dr_gateways row 6: pri_prefix",
            "dr_carriers row 1: gwlist names \"ghost\"",
            "dr_carriers row 2: \"ok=-1\"",
            "dr_carriers row 3: sort_alg \"Q\"",
            "dr_rules row 1: prefix",
            "dr_rules row 2: groupid",
            "dr_rules row 3: gwlist names carrier",
            "dr_rules row 4: gwlist is empty",
            "dr_rules row 5: timerec",
            "dr_rules row 6: prefix",
        ] {
            assert!(p.iter().any(|x| x.starts_with(want)), "{want}: {p:#?}");
        }
        assert_eq!(p.len(), 14, "{p:#?}");
        assert_eq!(dr.route(1, "123", 0).unwrap().rule, 7);
        // a number with multi-byte characters: no prefix is cut inside one
        assert!(dr.route(1, "1é2", 0).is_none());
        assert_eq!(dr.route(1, "12é", 0).unwrap().rule, 7);
        assert!(dr.route(1, "é", 0).is_none());
    }
}

//! Dialplan translation (OpenSIPS `dialplan`, `dp_translate`): per `dpid`, rules ordered by
//! priority (lowest `pr` first), each matching the input exactly or by regular expression
//! (optionally without regard to case), and rewriting it: the input's `subst_exp` matches
//! replaced by `repl_exp` (`\1`..`\9` refer to its groups), or, without `subst_exp`, the
//! whole input replaced by `repl_exp`.
//!
//! Exact rules of a dpid are found by hash; regular-expression rules are tried in priority
//! order, only those that could beat the best exact match. Every expression is compiled once,
//! with a size limit: a table row is hostile until checked, and a bad one is reported and
//! skipped, never half-applied.

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

/// How a rule's `match_exp` is compared (OpenSIPS `match_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// 0: the whole input equals `match_exp`.
    Equal,
    /// 1: `match_exp` is a regular expression found in the input (anchor it with `^...$`).
    Regex,
}

/// One rule as written in the `dialplan` table (or the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpRow {
    pub id: i64,
    pub dpid: i64,
    /// Lower first.
    pub pr: i64,
    /// 0 equal, 1 regex.
    pub match_op: i64,
    pub match_exp: String,
    /// 1: case-insensitive.
    pub match_flags: i64,
    pub subst_exp: String,
    pub repl_exp: String,
    pub attrs: String,
    pub disabled: bool,
}

/// The largest compiled expression a row may ask for.
const REGEX_SIZE_LIMIT: usize = 256 << 10;
/// Longest expression text accepted.
const MAX_EXPR_LEN: usize = 1024;

#[derive(Debug)]
struct Rule {
    id: i64,
    pr: i64,
    /// Position in the table, the tie-break between equal priorities.
    order: usize,
    matcher: Option<Regex>,
    subst: Option<Regex>,
    /// `repl_exp` in the regex crate's syntax (`${1}`), or literal when there is no `subst`.
    repl: String,
    attrs: String,
}

#[derive(Debug, Default)]
struct Plan {
    /// Exact rules by their text (lowercased for case-insensitive ones): the best rule.
    exact: HashMap<String, usize>,
    exact_nocase: HashMap<String, usize>,
    /// Regular-expression rules, best first.
    regex: Vec<usize>,
}

/// The rules of every dpid.
#[derive(Debug, Default)]
pub struct Dialplan {
    rules: Vec<Rule>,
    plans: HashMap<i64, Plan>,
}

/// What a translation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    pub output: String,
    /// The `id` of the rule that matched.
    pub rule: i64,
    pub attrs: String,
}

fn compile(what: &str, exp: &str, nocase: bool) -> Result<Regex, String> {
    if exp.len() > MAX_EXPR_LEN {
        return Err(format!("{what} longer than {MAX_EXPR_LEN} characters"));
    }
    RegexBuilder::new(exp)
        .case_insensitive(nocase)
        .size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| {
            let e = e.to_string();
            let first = e.lines().last().unwrap_or("invalid").trim();
            format!("{what} {exp:?}: {first}")
        })
}

/// OpenSIPS' replacement (`\1` groups, everything else literal) in the regex crate's syntax.
fn replacement(repl: &str) -> Result<String, String> {
    let mut out = String::with_capacity(repl.len() + 8);
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(d @ '0'..='9') => {
                    out.push_str("${");
                    out.push(d);
                    out.push('}');
                }
                Some('\\') => out.push('\\'),
                Some(other) => {
                    return Err(format!(
                        "repl_exp {repl:?}: \\{other} is not a group reference (\\0-\\9)"
                    ))
                }
                None => return Err(format!("repl_exp {repl:?} ends with a lone \\")),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Dialplan {
    /// Builds the rules of `rows`; each row that cannot be used is skipped and reported with
    /// its id and the reason. Disabled rows are left out silently.
    pub fn build(rows: &[DpRow]) -> (Dialplan, Vec<String>) {
        let mut dp = Dialplan::default();
        let mut problems = Vec::new();
        for (order, r) in rows.iter().enumerate() {
            if r.disabled {
                continue;
            }
            match dp.rule(order, r) {
                Ok(rule) => {
                    let idx = dp.rules.len();
                    let nocase = r.match_flags & 1 == 1;
                    dp.rules.push(rule);
                    let plan = dp.plans.entry(r.dpid).or_default();
                    match (r.match_op, nocase) {
                        (0, false) => {
                            keep_best(&mut plan.exact, r.match_exp.clone(), idx, &dp.rules)
                        }
                        (0, true) => keep_best(
                            &mut plan.exact_nocase,
                            r.match_exp.to_lowercase(),
                            idx,
                            &dp.rules,
                        ),
                        _ => plan.regex.push(idx),
                    }
                }
                Err(why) => problems.push(format!("dialplan row {}: {why}", r.id)),
            }
        }
        let rules = &dp.rules;
        for plan in dp.plans.values_mut() {
            plan.regex.sort_by_key(|&i| (rules[i].pr, rules[i].order));
        }
        (dp, problems)
    }

    fn rule(&self, order: usize, r: &DpRow) -> Result<Rule, String> {
        let nocase = match r.match_flags {
            0 => false,
            1 => true,
            f => {
                return Err(format!(
                    "match_flags {f}: 0 (case-sensitive) or 1 (insensitive)"
                ))
            }
        };
        let matcher = match r.match_op {
            0 => {
                if r.match_exp.is_empty() {
                    return Err("match_exp is empty".into());
                }
                None
            }
            1 => Some(compile("match_exp", &r.match_exp, nocase)?),
            op => return Err(format!("match_op {op}: 0 (equal) or 1 (regex)")),
        };
        let subst = match r.subst_exp.is_empty() {
            true => None,
            false => Some(compile("subst_exp", &r.subst_exp, nocase)?),
        };
        let repl = match &subst {
            Some(s) => {
                let repl = replacement(&r.repl_exp)?;
                // a reference to a group the expression does not have is a mistake, not an
                // empty string at run time
                for c in repl.split("${").skip(1) {
                    let n: usize = c[..1].parse().unwrap_or(0);
                    if n >= s.captures_len() {
                        return Err(format!(
                            "repl_exp {:?} refers to group {n}, subst_exp {:?} has {}",
                            r.repl_exp,
                            r.subst_exp,
                            s.captures_len() - 1
                        ));
                    }
                }
                repl
            }
            None => r.repl_exp.clone(),
        };
        Ok(Rule {
            id: r.id,
            pr: r.pr,
            order,
            matcher,
            subst,
            repl,
            attrs: r.attrs.clone(),
        })
    }

    /// Rules loaded, in all dpids.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when no rule is loaded.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `dp_translate(dpid, input)`: the first rule of `dpid` (by priority) matching `input`,
    /// applied; `None` when none matches.
    pub fn translate(&self, dpid: i64, input: &str) -> Option<Translation> {
        let plan = self.plans.get(&dpid)?;
        let rank = |i: usize| (self.rules[i].pr, self.rules[i].order);
        let mut best: Option<usize> = plan.exact.get(input).copied();
        if !plan.exact_nocase.is_empty() {
            if let Some(&i) = plan.exact_nocase.get(&input.to_lowercase()) {
                if best.is_none_or(|b| rank(i) < rank(b)) {
                    best = Some(i);
                }
            }
        }
        for &i in &plan.regex {
            if best.is_some_and(|b| rank(b) < rank(i)) {
                break; // the rest rank below the exact match found
            }
            if self.rules[i]
                .matcher
                .as_ref()
                .is_some_and(|m| m.is_match(input))
            {
                best = Some(i);
                break;
            }
        }
        let r = &self.rules[best?];
        let output = match &r.subst {
            Some(s) => s.replace(input, r.repl.as_str()).into_owned(),
            None if r.repl.is_empty() => input.to_string(),
            None => r.repl.clone(),
        };
        Some(Translation {
            output,
            rule: r.id,
            attrs: r.attrs.clone(),
        })
    }
}

fn keep_best(map: &mut HashMap<String, usize>, key: String, idx: usize, rules: &[Rule]) {
    let rank = |i: usize| (rules[i].pr, rules[i].order);
    match map.get(&key) {
        Some(&old) if rank(old) <= rank(idx) => {}
        _ => {
            map.insert(key, idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, pr: i64, op: i64, m: &str, subst: &str, repl: &str) -> DpRow {
        DpRow {
            id,
            dpid: 1,
            pr,
            match_op: op,
            match_exp: m.into(),
            subst_exp: subst.into(),
            repl_exp: repl.into(),
            ..DpRow::default()
        }
    }

    #[test]
    fn national_numbers_become_e164_and_priorities_decide() {
        let (dp, problems) = Dialplan::build(&[
            row(1, 10, 1, r"^0[1-9][0-9]{8,10}$", r"^0(.*)$", r"+49\1"),
            row(2, 5, 0, "110", "", "+49110"),
            row(3, 20, 1, r"^[0-9]+$", "", ""),
            row(4, 1, 1, r"^00", r"^00", "+"),
            DpRow {
                dpid: 2,
                ..row(5, 1, 0, "Alice", "", "1001")
            },
            DpRow {
                dpid: 2,
                match_flags: 1,
                ..row(6, 2, 0, "BOB", "", "1002")
            },
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        let t = |dpid, s| dp.translate(dpid, s).map(|t| (t.output, t.rule));
        assert_eq!(t(1, "0301234567"), Some(("+49301234567".into(), 1)));
        assert_eq!(t(1, "00441234"), Some(("+441234".into(), 4)));
        assert_eq!(t(1, "110"), Some(("+49110".into(), 2)), "exact, priority 5");
        assert_eq!(
            t(1, "12345"),
            Some(("12345".into(), 3)),
            "no subst, no repl: unchanged"
        );
        assert_eq!(t(1, "abc"), None);
        assert_eq!(t(2, "Alice"), Some(("1001".into(), 5)));
        assert_eq!(t(2, "alice"), None, "case-sensitive by default");
        assert_eq!(t(2, "bob"), Some(("1002".into(), 6)));
        assert_eq!(t(9, "110"), None, "no such dpid");
        // a dollar in the replacement is literal
        let (dp, p) = Dialplan::build(&[row(1, 1, 1, "^x$", "^x$", "$1\\1")]);
        assert_eq!(p.len(), 1, "group 1 does not exist: {p:?}");
        let (dp2, p) = Dialplan::build(&[row(1, 1, 1, "^(x)$", "^(x)$", "$\\1$")]);
        assert!(p.is_empty());
        assert_eq!(dp2.translate(1, "x").unwrap().output, "$x$");
        assert!(dp.is_empty());
    }

    #[test]
    fn a_regex_rule_ranked_above_an_exact_one_wins_and_ties_go_by_table_order() {
        let (dp, _) = Dialplan::build(&[
            row(1, 5, 0, "123", "", "exact"),
            row(2, 1, 1, "^1", "", "regex"),
            row(3, 1, 1, "^12", "", "later"),
        ]);
        assert_eq!(dp.translate(1, "123").unwrap().output, "regex");
        let (dp, _) =
            Dialplan::build(&[row(1, 1, 0, "123", "", "a"), row(2, 1, 0, "123", "", "b")]);
        assert_eq!(dp.translate(1, "123").unwrap().rule, 1);
    }

    #[test]
    fn hostile_rows_are_reported_and_skipped() {
        let huge = format!("^{}$", "(a|b|c|d)*".repeat(200));
        let rows = [
            row(1, 1, 1, "^(unclosed", "", ""),
            row(2, 1, 7, "x", "", ""),
            row(3, 1, 1, "^x$", "^(x$", "y"),
            row(4, 1, 1, "^x$", "^(x)$", "\\q"),
            row(5, 1, 1, &huge, "", ""),
            row(6, 1, 1, &"a".repeat(5000), "", ""),
            row(7, 1, 0, "", "", "x"),
            DpRow {
                match_flags: 4,
                ..row(8, 1, 0, "x", "", "")
            },
            row(9, 1, 1, "^(x)$", "^(x)$", "tail\\"),
            DpRow {
                disabled: true,
                ..row(10, 1, 1, "^(bad", "", "")
            },
            row(11, 1, 0, "ok", "", "fine"),
        ];
        let (dp, problems) = Dialplan::build(&rows);
        assert_eq!(dp.len(), 1, "only row 11: {problems:#?}");
        assert_eq!(problems.len(), 9, "{problems:#?}");
        for (id, why) in [
            (1, "match_exp"),
            (2, "match_op 7"),
            (3, "subst_exp"),
            (4, "not a group reference"),
            (5, "match_exp"),
            (6, "longer than"),
            (7, "empty"),
            (8, "match_flags 4"),
            (9, "lone"),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("dialplan row {id}:")) && p.contains(why)),
                "row {id} ({why}): {problems:#?}"
            );
        }
        assert_eq!(dp.translate(1, "ok").unwrap().output, "fine");
    }

    #[test]
    fn odd_inputs_translate_safely() {
        let (dp, _) = Dialplan::build(&[row(1, 1, 1, r"^\+?([0-9]+)$", r"^\+?([0-9]+)$", r"+\1")]);
        for input in ["", "+", "\u{0}", "٣٤٥", &"9".repeat(10_000)] {
            let _ = dp.translate(1, input);
        }
        assert_eq!(dp.translate(1, "+4930").unwrap().output, "+4930");
        assert_eq!(dp.translate(1, "4930").unwrap().output, "+4930");
    }
}

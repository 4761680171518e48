//! The tables switchboard reads and writes, written once for the three engines: subscribers,
//! location, dispatcher, dialogs, load balancer, rtpengine sets, CDRs, and the node ids that
//! keep rows of several processes apart.

use crate::schema::{DIALOG_COLUMNS, DIALOG_OURS, LOCATION_COLUMNS};
use crate::sql::{Param, Row};
use crate::sqlite_cdr::{self, Field};
use crate::{
    runs, BadRow, CdrRow, DialogOp, DialogRow, DispatcherRow, LoadBalancerRow, LocationOp,
    LocationRow, RtpengineRow, Store, StoreError, SubscriberRow,
};

/// Columns written where a table has them without being switchboard's: OpenSIPS 3's dialog
/// ping CSeqs (NOT NULL without a default in its schema version 12; they start at the
/// dialog's CSeqs).
pub(crate) const ALSO_WRITTEN: &[&str] = &["caller_ping_cseq", "callee_ping_cseq"];

/// Splits rows into the readable ones and the others with the reason.
fn split<T>(
    rows: &[Row],
    key: &str,
    read: impl Fn(&Row) -> Result<T, String>,
) -> (Vec<T>, Vec<BadRow>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for r in rows {
        match read(r) {
            Ok(v) => good.push(v),
            Err(reason) => bad.push(BadRow {
                id: r.int(key).ok(),
                reason,
            }),
        }
    }
    (good, bad)
}

/// The bits of an id a process takes from its node number: ids are `node << 37 | counter`,
/// below 2^53 (exact in JSON numbers and JavaScript).
pub const ID_COUNTER_BITS: u32 = 37;
/// Node numbers wrap at this (16 bits).
pub const ID_NODES: i64 = 1 << 16;

/// Columns of `dialog` written only where the table has them: switchboard's additions
/// ([`DIALOG_OURS`]), then OpenSIPS 3's ping CSeqs ([`ALSO_WRITTEN`]).
const DIALOG_EXTRA: [&str; 6] = [
    "node",
    "answer_time",
    "session_expires",
    "ruri",
    "caller_ping_cseq",
    "callee_ping_cseq",
];

impl Store {
    // ----- node ids --------------------------------------------------------------------

    /// Takes a node number for this process (a row of `switchboard_nodes`, numbered by the
    /// database, so two processes on one database never get the same one) and returns the
    /// first id of its range: bindings and dialogs made by this process are numbered from
    /// there, and never collide with another process's rows.
    pub async fn claim_id_base(&self, name: &str, unix_now: i64) -> Result<u64, StoreError> {
        let mut st = self.stmt("INSERT INTO switchboard_nodes (name, started) VALUES ");
        st.push("(").arg(name).push(", ").arg(unix_now).push(")");
        let n = self.engine.insert_id(&st).await?;
        // 0 is the range of ids made before this scheme (and of tests): never handed out
        let node = (n.rem_euclid(ID_NODES - 1) + 1) as u64;
        Ok(node << ID_COUNTER_BITS)
    }

    // ----- subscriber ------------------------------------------------------------------

    /// Every `subscriber` row: the readable ones, and the others with the reason.
    pub async fn subscriber_rows(&self) -> Result<(Vec<SubscriberRow>, Vec<BadRow>), StoreError> {
        let rows = self.read("subscriber", "id").await?;
        Ok(split(&rows, "id", |r| {
            let row = SubscriberRow {
                username: r.text_or_empty("username")?,
                domain: r.text_or_empty("domain")?,
                password: r.text_or_empty("password")?,
                ha1: r.text_or_empty("ha1")?,
                ha1_sha256: r.text_or_empty("ha1_sha256")?,
                email_address: r.text_or_empty("email_address")?,
            };
            if row.username.is_empty() {
                return Err("empty username".into());
            }
            Ok(row)
        }))
    }

    /// Adds or replaces a subscriber (by username and domain).
    pub async fn upsert_subscriber(&self, s: &SubscriberRow) -> Result<(), StoreError> {
        let c = self.columns("subscriber").await?;
        let mut del = self.stmt("DELETE FROM subscriber WHERE username = ");
        del.arg(&s.username).push(" AND domain = ").arg(&s.domain);
        let mut cols = vec!["username", "domain", "password", "ha1"];
        let mut vals: Vec<Param> = vec![
            (&s.username).into(),
            (&s.domain).into(),
            (&s.password).into(),
            (&s.ha1).into(),
        ];
        for (col, v) in [
            ("ha1_sha256", &s.ha1_sha256),
            ("email_address", &s.email_address),
        ] {
            if c.has(col) {
                cols.push(col);
                vals.push(v.into());
            }
        }
        let mut ins = self.stmt(&format!(
            "INSERT INTO subscriber ({}) VALUES ",
            cols.join(", ")
        ));
        ins.list(vals);
        self.engine.batch(&[del, ins]).await
    }

    /// Removes a subscriber; returns the rows removed.
    pub async fn delete_subscriber(&self, username: &str, domain: &str) -> Result<u64, StoreError> {
        let mut st = self.stmt("DELETE FROM subscriber WHERE username = ");
        st.arg(username).push(" AND domain = ").arg(domain);
        self.engine.exec(&st).await
    }

    // ----- location --------------------------------------------------------------------

    /// Every `location` row.
    pub async fn location_rows(&self) -> Result<(Vec<LocationRow>, Vec<BadRow>), StoreError> {
        let rows = self.read("location", "contact_id").await?;
        Ok(split(&rows, "contact_id", |r| {
            Ok(LocationRow {
                contact_id: r.int("contact_id")?,
                username: r.text_or_empty("username")?,
                domain: r.text_or_empty("domain")?,
                contact: r.text_or_empty("contact")?,
                received: r.opt_text("received")?,
                path: r.opt_text("path")?,
                expires: r.int("expires")?,
                q: r.real("q")?,
                callid: r.text_or_empty("callid")?,
                cseq: r.int("cseq")?,
                // OpenSIPS 2 kept the flags as a number
                cflags: match r.get("cflags") {
                    Some(crate::sql::Cell::Int(v)) => v.to_string(),
                    _ => r.text_or_empty("cflags")?,
                },
                user_agent: r.text_or_empty("user_agent")?,
                sip_instance: r.opt_text("sip_instance")?,
                kv_store: r.opt_text("kv_store")?,
                last_modified: r.int("last_modified").unwrap_or(0),
            })
        }))
    }

    /// Applies a batch of location changes in one transaction (the write-behind flush).
    /// Consecutive upserts go as multi-row upserts (up to 50 rows), consecutive deletes as
    /// one `IN` list each: order is kept between the runs.
    pub async fn apply_location<'a>(&self, ops: &'a [LocationOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let c = self.columns("location").await?;
        let d = self.dialect();
        let (exp_dt, mod_dt) = (c.is_datetime("expires"), c.is_datetime("last_modified"));
        let head = d.upsert_head("location", LOCATION_COLUMNS);
        let tail = d.upsert_tail("contact_id", LOCATION_COLUMNS);
        let mut sts = Vec::new();
        for (upsert, run) in runs(ops, |o| matches!(o, LocationOp::Upsert(_))) {
            if upsert {
                let mut st = self.stmt(&head);
                for (k, op) in run.iter().enumerate() {
                    let LocationOp::Upsert(l) = op else { continue };
                    let t = |col, v| self.cut(&c, "location", col, v);
                    let o = |col, v: &'a Option<String>| v.as_deref().map(|v| t(col, v));
                    st.push(if k > 0 { ", (" } else { "(" });
                    st.arg(l.contact_id)
                        .push(", ")
                        .arg(t("username", &l.username))
                        .push(", ")
                        .arg(t("domain", &l.domain))
                        .push(", ")
                        .arg(t("contact", &l.contact))
                        .push(", ")
                        .arg(o("received", &l.received))
                        .push(", ")
                        .arg(o("path", &l.path))
                        .push(", ")
                        .time_arg(l.expires, exp_dt)
                        .push(", ")
                        .arg(l.q)
                        .push(", ")
                        .arg(t("callid", &l.callid))
                        .push(", ")
                        .arg(l.cseq)
                        .push(", ")
                        .time_arg(l.last_modified, mod_dt)
                        .push(", 0, ")
                        .arg(t("cflags", &l.cflags))
                        .push(", ")
                        .arg(t("user_agent", &l.user_agent))
                        .push(", NULL, NULL, ")
                        .arg(o("sip_instance", &l.sip_instance))
                        .push(", ")
                        .arg(o("kv_store", &l.kv_store))
                        .push(")");
                }
                st.push(&tail);
                sts.push(st);
            } else {
                let mut st = self.stmt("DELETE FROM location WHERE contact_id IN ");
                st.list(run.iter().filter_map(|o| match o {
                    LocationOp::Delete(id) => Some(*id),
                    LocationOp::Upsert(_) => None,
                }));
                sts.push(st);
            }
        }
        self.engine.batch(&sts).await
    }

    // ----- dispatcher ------------------------------------------------------------------

    /// Every `dispatcher` row: the readable ones, and the others with the reason.
    pub async fn dispatcher_rows(&self) -> Result<(Vec<DispatcherRow>, Vec<BadRow>), StoreError> {
        let rows = self.read("dispatcher", "id").await?;
        Ok(split(&rows, "id", |r| {
            let weight = match r.int("weight") {
                Ok(w) => w.to_string(),
                Err(_) => r.text("weight")?,
            };
            Ok(DispatcherRow {
                id: r.int("id")?,
                setid: r.int("setid")?,
                destination: r.text("destination")?,
                socket: r.opt_text("socket")?,
                state: r.int("state")?,
                // OpenSIPS 2's table (version 8) has no probe_mode
                probe_mode: r.opt_int("probe_mode")?.unwrap_or(0),
                weight,
                priority: r.int("priority")?,
                attrs: r.opt_text("attrs")?,
                description: r.opt_text("description")?,
            })
        }))
    }

    /// Inserts a destination; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_dispatcher(
        &self,
        setid: i64,
        destination: &str,
        state: i64,
        weight: &str,
        priority: i64,
        attrs: &str,
        description: &str,
    ) -> Result<i64, StoreError> {
        let mut st = self.stmt(
            "INSERT INTO dispatcher (setid, destination, state, weight, priority, attrs, description) VALUES ",
        );
        st.list([
            Param::from(setid),
            destination.into(),
            state.into(),
            weight.into(),
            priority.into(),
            attrs.into(),
            description.into(),
        ]);
        self.engine.insert_id(&st).await
    }

    /// Deletes a set's destination; returns the rows removed.
    pub async fn delete_dispatcher(
        &self,
        setid: i64,
        destination: &str,
    ) -> Result<u64, StoreError> {
        let mut st = self.stmt("DELETE FROM dispatcher WHERE setid = ");
        st.arg(setid).push(" AND destination = ").arg(destination);
        self.engine.exec(&st).await
    }

    /// Writes a destination's state (OpenSIPS codes: 0 active, 1 inactive, 2 probing).
    pub async fn set_dispatcher_state(
        &self,
        setid: i64,
        destination: &str,
        state: i64,
    ) -> Result<u64, StoreError> {
        let mut st = self.stmt("UPDATE dispatcher SET state = ");
        st.arg(state)
            .push(" WHERE setid = ")
            .arg(setid)
            .push(" AND destination = ")
            .arg(destination);
        self.engine.exec(&st).await
    }

    // ----- dialog ----------------------------------------------------------------------

    /// Every `dialog` row.
    pub async fn dialog_rows(&self) -> Result<(Vec<DialogRow>, Vec<BadRow>), StoreError> {
        let rows = self.read("dialog", "dlg_id").await?;
        Ok(split(&rows, "dlg_id", |r| {
            // OpenSIPS keeps the CSeqs as text
            let cseq = |c: &str| {
                r.int(c).or_else(|_| {
                    r.text(c).and_then(|t| {
                        t.trim()
                            .parse()
                            .map_err(|_| format!("column {c} is not a number"))
                    })
                })
            };
            Ok(DialogRow {
                dlg_id: r.int("dlg_id")?,
                callid: r.text("callid")?,
                from_uri: r.text("from_uri")?,
                from_tag: r.text("from_tag")?,
                to_uri: r.text("to_uri")?,
                to_tag: r.text("to_tag")?,
                caller_cseq: cseq("caller_cseq")?,
                callee_cseq: cseq("callee_cseq")?,
                caller_contact: r.text_or_empty("caller_contact")?,
                callee_contact: r.text_or_empty("callee_contact")?,
                caller_route_set: r.text_or_empty("caller_route_set")?,
                callee_route_set: r.text_or_empty("callee_route_set")?,
                caller_sock: r.text("caller_sock")?,
                callee_sock: r.text("callee_sock")?,
                state: r.int("state")?,
                start_time: r.int("start_time")?,
                timeout: r.int("timeout")?,
                node: r.opt_text("node")?,
                answer_time: r.opt_int("answer_time")?,
                session_expires: r.opt_int("session_expires")?,
                ruri: r.opt_text("ruri").ok().flatten().unwrap_or_default(),
            })
        }))
    }

    /// Applies dialog changes in one transaction, in order: consecutive upserts as multi-row
    /// statements (up to 50 rows), consecutive deletes as one `IN` list each.
    pub async fn apply_dialogs<'a>(&self, ops: &'a [DialogOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let c = self.columns("dialog").await?;
        let ours: Vec<&str> = DIALOG_COLUMNS.iter().chain(DIALOG_OURS).copied().collect();
        self.tell_once("dialog", &ours, ALSO_WRITTEN, &c);
        let has: [bool; 6] = DIALOG_EXTRA.map(|e| c.has(e));
        let mut cols: Vec<&str> = DIALOG_COLUMNS.to_vec();
        cols.extend(
            DIALOG_EXTRA
                .iter()
                .zip(has)
                .filter(|(_, h)| *h)
                .map(|(e, _)| *e),
        );
        let d = self.dialect();
        let head = d.upsert_head("dialog", &cols);
        let tail = d.upsert_tail("dlg_id", &cols);
        let mut sts = Vec::new();
        for (upsert, run) in runs(ops, |o| matches!(o, DialogOp::Upsert(_))) {
            if upsert {
                let mut st = self.stmt(&head);
                for (k, op) in run.iter().enumerate() {
                    let DialogOp::Upsert(d) = op else { continue };
                    let t = |col, v: &'a String| Param::from(self.cut(&c, "dialog", col, v));
                    let route = |col, r: &'a String| {
                        Param::Text(Some(self.cut(&c, "dialog", col, r)).filter(|r| !r.is_empty()))
                    };
                    let mut vals: Vec<Param> = vec![
                        d.dlg_id.into(),
                        t("callid", &d.callid),
                        t("from_uri", &d.from_uri),
                        t("from_tag", &d.from_tag),
                        t("to_uri", &d.to_uri),
                        t("to_tag", &d.to_tag),
                        // a text column in OpenSIPS' schema: every engine converts
                        d.caller_cseq.into(),
                        d.callee_cseq.into(),
                        t("caller_contact", &d.caller_contact),
                        t("callee_contact", &d.callee_contact),
                        route("caller_route_set", &d.caller_route_set),
                        route("callee_route_set", &d.callee_route_set),
                        t("caller_sock", &d.caller_sock),
                        t("callee_sock", &d.callee_sock),
                        d.state.into(),
                        d.start_time.into(),
                        d.timeout.into(),
                    ];
                    let extra: [Param; 6] = [
                        d.node
                            .as_deref()
                            .map(|n| self.cut(&c, "dialog", "node", n))
                            .into(),
                        d.answer_time.into(),
                        d.session_expires.into(),
                        t("ruri", &d.ruri),
                        d.caller_cseq.into(),
                        d.callee_cseq.into(),
                    ];
                    vals.extend(
                        extra
                            .into_iter()
                            .zip(has)
                            .filter(|(_, h)| *h)
                            .map(|(p, _)| p),
                    );
                    if k > 0 {
                        st.push(", ");
                    }
                    st.list(vals);
                }
                st.push(&tail);
                sts.push(st);
            } else {
                let mut st = self.stmt("DELETE FROM dialog WHERE dlg_id IN ");
                st.list(run.iter().filter_map(|o| match o {
                    DialogOp::Delete(id) => Some(*id),
                    DialogOp::Upsert(_) => None,
                }));
                sts.push(st);
            }
        }
        let r = self.engine.batch(&sts).await;
        if r.is_err() {
            self.forget_columns();
        }
        r
    }

    // ----- load_balancer, rtpengine -----------------------------------------------------

    /// Every `load_balancer` row: the readable ones, and the others with the reason.
    pub async fn load_balancer_rows(
        &self,
    ) -> Result<(Vec<LoadBalancerRow>, Vec<BadRow>), StoreError> {
        let rows = self.read("load_balancer", "id").await?;
        Ok(split(&rows, "id", |r| {
            Ok(LoadBalancerRow {
                id: r.int("id")?,
                group_id: r.int("group_id")?,
                dst_uri: r.text("dst_uri")?,
                resources: r.text("resources")?,
                probe_mode: r.int("probe_mode")?,
                attrs: r.opt_text("attrs")?,
                description: r.opt_text("description")?,
            })
        }))
    }

    /// Every `rtpengine` row: the readable ones, and the others with the reason.
    pub async fn rtpengine_rows(&self) -> Result<(Vec<RtpengineRow>, Vec<BadRow>), StoreError> {
        let rows = self.read("rtpengine", "id").await?;
        Ok(split(&rows, "id", |r| {
            Ok(RtpengineRow {
                id: r.int("id")?,
                socket: r.text("socket")?,
                set_id: r.int("set_id")?,
            })
        }))
    }

    // ----- CDRs --------------------------------------------------------------------------

    /// The CDR columns `table` has, in [`sqlite_cdr::FIELDS`] order.
    async fn cdr_fields(&self, table: &'static str) -> Result<Vec<Field>, StoreError> {
        let c = self.columns(table).await?;
        let ours: Vec<&str> = sqlite_cdr::FIELDS.iter().map(|(n, _)| *n).collect();
        self.tell_once(table, &ours, &[], &c);
        Ok(sqlite_cdr::FIELDS
            .iter()
            .filter(|(n, _)| c.has(n))
            .map(|(_, f)| *f)
            .collect())
    }

    /// Writes accounted calls, in one transaction: answered ones into `acc`, failed ones
    /// into `missed_calls`, with the columns each table has.
    pub async fn insert_cdrs<S: AsRef<str> + Sync>(
        &self,
        rows: &[CdrRow<S>],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let acc = self.cdr_fields("acc").await?;
        let missed = self.cdr_fields("missed_calls").await?;
        let r = if let Some(pool) = self.engine.sqlite() {
            // SQLite: through its own statement API on the pooled connection, locked away
            // from sqlx's worker: one prepared statement per table, each column bound
            // without a copy. Through sqlx (a bound parameter per column, 50-row
            // statements) a row cost 7.2 µs of CPU; this way under 2 µs (BENCHMARKS.md,
            // accounting).
            let mut conn = pool.acquire().await?;
            let mut locked = conn.lock_handle().await?;
            let db = locked.as_raw_handle().as_ptr();
            // SAFETY: `db` is a live connection handle that sqlx's worker does not touch
            // while `locked` exists; every statement is finalized before returning.
            unsafe { sqlite_cdr::insert_cdrs(db, rows, &acc, &missed) }.map_err(StoreError::Sqlite)
        } else {
            self.insert_cdrs_sql(rows, &acc, &missed).await
        };
        r.inspect_err(|_| self.forget_columns())
    }

    /// The CDR writer of the server engines: multi-row INSERTs of up to 50 calls.
    async fn insert_cdrs_sql<'a, S: AsRef<str> + Sync>(
        &self,
        rows: &'a [CdrRow<S>],
        acc: &[Field],
        missed: &[Field],
    ) -> Result<(), StoreError> {
        let acc_cols = self.columns("acc").await?;
        let missed_cols = self.columns("missed_calls").await?;
        // the three digits of each code, as text: "007" stays "007"
        let codes: Vec<[u8; 3]> = rows
            .iter()
            .map(|r| sqlite_cdr::code_text(r.sip_code))
            .collect();
        let code = |i: usize| std::str::from_utf8(&codes[i]).unwrap_or("000");
        let answered: Vec<(usize, &CdrRow<S>)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.answered)
            .collect();
        let failed: Vec<(usize, &CdrRow<S>)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.answered)
            .collect();
        let mut sts = Vec::new();
        for (table, fields, cols, list) in [
            ("acc", acc, &acc_cols, &answered),
            ("missed_calls", missed, &missed_cols, &failed),
        ] {
            let names: Vec<&str> = fields
                .iter()
                .filter_map(|f| {
                    sqlite_cdr::FIELDS
                        .iter()
                        .find(|(_, g)| g == f)
                        .map(|(n, _)| *n)
                })
                .collect();
            for piece in crate::pieces(list) {
                let mut st = self.stmt(&format!(
                    "INSERT INTO {table} ({}) VALUES ",
                    names.join(", ")
                ));
                for (k, &(at, r)) in piece.iter().enumerate() {
                    st.push(if k > 0 { ", (" } else { "(" });
                    for (i, (f, name)) in fields.iter().zip(&names).enumerate() {
                        if i > 0 {
                            st.push(", ");
                        }
                        let dt = cols.is_datetime(name);
                        let t = |v: &'a S| self.cut(cols, table, name, v.as_ref());
                        match f {
                            Field::Method => st.arg("INVITE"),
                            Field::FromTag => st.arg(t(&r.from_tag)),
                            Field::ToTag => st.arg(t(&r.to_tag)),
                            Field::CallId => st.arg(t(&r.callid)),
                            Field::Code => st.arg(code(at)),
                            Field::Reason => st.arg(t(&r.sip_reason)),
                            Field::Time => st.time_arg(r.answer_time.unwrap_or(r.end_time), dt),
                            Field::FromUser => st.arg(t(&r.from_user)),
                            Field::FromDomain => st.arg(t(&r.from_domain)),
                            Field::ToUser => st.arg(t(&r.to_user)),
                            Field::ToDomain => st.arg(t(&r.to_domain)),
                            Field::RuriUser => st.arg(t(&r.ruri_user)),
                            Field::RuriDomain => st.arg(t(&r.ruri_domain)),
                            Field::SrcIp => st.arg(t(&r.src_ip)),
                            Field::Node => st.arg(r.node.as_ref().map(t)),
                            Field::SetupTime => st.time_arg(r.setup_time, dt),
                            Field::AnswerTime => match r.answer_time {
                                Some(t) => st.time_arg(t, dt),
                                None => st.arg(None::<i64>),
                            },
                            Field::EndTime => st.time_arg(r.end_time, dt),
                            Field::HangupBy => st.arg(t(&r.hangup_by)),
                            Field::Duration => st.arg(r.duration),
                            Field::MsDuration => st.arg(r.duration * 1000),
                            Field::Setuptime => {
                                st.arg(r.answer_time.unwrap_or(r.setup_time) - r.setup_time)
                            }
                            Field::Created => st.time_arg(r.setup_time, dt),
                        };
                    }
                    st.push(")");
                }
                sts.push(st);
            }
        }
        self.engine.batch(&sts).await
    }

    /// Accounted calls ended at or after `since` (UNIX), answered and failed, oldest first.
    pub async fn cdrs_since(&self, since: i64, limit: i64) -> Result<Vec<CdrRow>, StoreError> {
        self.cdrs(since, limit, false).await
    }

    /// The `limit` calls that ended last (at or after `since`), newest first.
    pub async fn latest_cdrs(&self, since: i64, limit: i64) -> Result<Vec<CdrRow>, StoreError> {
        self.cdrs(since, limit, true).await
    }

    async fn cdrs(
        &self,
        since: i64,
        limit: i64,
        newest_first: bool,
    ) -> Result<Vec<CdrRow>, StoreError> {
        let acc = self.columns("acc").await?;
        let missed = self.columns("missed_calls").await?;
        let d = self.dialect();
        // a table made by OpenSIPS' schema lacks our columns: read them as empty, and take
        // the end of the call from its `time` (and `duration`)
        let mut st = self.stmt("SELECT * FROM (");
        for (k, (c, answered)) in [(&acc, true), (&missed, false)].into_iter().enumerate() {
            let col = |n: &str, dflt: &str| {
                if !c.has(n) {
                    format!("{dflt} AS {n}")
                } else if c.is_datetime(n) {
                    format!("{} AS {n}", d.unix_of(n))
                } else {
                    n.to_string()
                }
            };
            let secs = d.unix_of("time");
            let end = if c.has("end_time") && !c.is_datetime("end_time") {
                "end_time".to_string()
            } else if answered && c.has("duration") {
                format!("{secs} + duration")
            } else {
                secs
            };
            let texts = [
                "from_user",
                "from_domain",
                "to_user",
                "to_domain",
                "ruri_user",
                "ruri_domain",
                "src_ip",
            ]
            .map(|n| col(n, "''"))
            .join(", ");
            if k > 0 {
                st.push(" UNION ALL ");
            }
            st.push(&format!(
                "SELECT {} AS answered, callid, from_tag, to_tag, sip_code, sip_reason, {texts}, {}, {}, {}, {end} AS end_time, {}, {} FROM {} WHERE {end} >= ",
                answered as i32,
                col("node", "NULL"),
                col("setup_time", "0"),
                col("answer_time", "NULL"),
                if answered { col("duration", "0") } else { "0 AS duration".into() },
                col("hangup_by", "''"),
                if answered { "acc" } else { "missed_calls" },
            ));
            st.arg(since);
        }
        st.push(&format!(
            ") AS cdrs ORDER BY end_time {} LIMIT ",
            if newest_first { "DESC" } else { "ASC" }
        ));
        st.arg(limit);
        let rows = self.engine.fetch(&st).await?;
        Ok(rows
            .iter()
            .map(|r| CdrRow {
                answered: r.int("answered").unwrap_or(0) == 1,
                callid: r.text_or_empty("callid").unwrap_or_default(),
                from_tag: r.text_or_empty("from_tag").unwrap_or_default(),
                to_tag: r.text_or_empty("to_tag").unwrap_or_default(),
                sip_code: match r.get("sip_code") {
                    Some(crate::sql::Cell::Int(v)) => u16::try_from(*v).unwrap_or(0),
                    Some(crate::sql::Cell::Text(t)) => t.trim().parse().unwrap_or(0),
                    _ => 0,
                },
                sip_reason: r.text_or_empty("sip_reason").unwrap_or_default(),
                from_user: r.text_or_empty("from_user").unwrap_or_default(),
                from_domain: r.text_or_empty("from_domain").unwrap_or_default(),
                to_user: r.text_or_empty("to_user").unwrap_or_default(),
                to_domain: r.text_or_empty("to_domain").unwrap_or_default(),
                ruri_user: r.text_or_empty("ruri_user").unwrap_or_default(),
                ruri_domain: r.text_or_empty("ruri_domain").unwrap_or_default(),
                src_ip: r.text_or_empty("src_ip").unwrap_or_default(),
                node: r.opt_text("node").unwrap_or_default(),
                setup_time: r.int("setup_time").unwrap_or_default(),
                answer_time: r.opt_int("answer_time").unwrap_or_default(),
                end_time: r.int("end_time").unwrap_or_default(),
                duration: r.int("duration").unwrap_or_default(),
                hangup_by: r.text_or_empty("hangup_by").unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialog_extras_are_ours_then_the_ping_cseqs() {
        let both: Vec<&str> = DIALOG_OURS.iter().chain(ALSO_WRITTEN).copied().collect();
        assert_eq!(DIALOG_EXTRA.to_vec(), both);
        // the upsert binds its values in this order
        assert_eq!(DIALOG_COLUMNS.len(), 17);
        assert_eq!(LOCATION_COLUMNS.len(), 18);
    }
}

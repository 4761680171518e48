//! `store`: the tables switchboard shares with OpenSIPS installations, behind one type per
//! backend. SQLite is the embedded default; PostgreSQL, MySQL and Redis arrive with the
//! issues that need them, and will run the same test battery.
//!
//! The `dispatcher` table has the OpenSIPS 3 schema (version 9): `id, setid, destination,
//! socket, state, probe_mode, weight, priority, attrs, description`. SQLite types columns
//! loosely, so every row is read column by column: a row that does not fit is returned as
//! a [`BadRow`] with its id and the reason, and the others still load.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

mod numbers;
pub use numbers::{AliasRow, DialplanRow, DrCarrierRow, DrGatewayRow, DrGroupRow, DrRuleRow};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one this build supports.
    #[error("unsupported database URL {0:?} (this version has sqlite://PATH)")]
    Url(String),
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// SQLite refused a statement run through its own API (the CDR writer).
    #[error("database error: {0}")]
    Sqlite(String),
}

/// One `dispatcher` row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherRow {
    pub id: i64,
    pub setid: i64,
    pub destination: String,
    pub socket: Option<String>,
    pub state: i64,
    pub probe_mode: i64,
    /// A number as text (OpenSIPS allows an `fs://` URL here).
    pub weight: String,
    pub priority: i64,
    pub attrs: Option<String>,
    pub description: Option<String>,
}

/// One `subscriber` row (OpenSIPS 3 schema, version 8): a plain `password`, or the HA1
/// hashes, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriberRow {
    pub username: String,
    pub domain: String,
    pub password: String,
    pub ha1: String,
    pub ha1_sha256: String,
    pub email_address: String,
}

/// One `location` row (OpenSIPS 3 usrloc schema). `received` is a SIP URI of the source
/// address with its transport; `cflags` holds `NAT` for contacts behind NAT; `kv_store`
/// carries `reg-id` as JSON.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocationRow {
    pub contact_id: i64,
    pub username: String,
    pub domain: String,
    pub contact: String,
    pub received: Option<String>,
    pub path: Option<String>,
    /// UNIX time.
    pub expires: i64,
    pub q: f64,
    pub callid: String,
    pub cseq: i64,
    pub cflags: String,
    pub user_agent: String,
    pub sip_instance: Option<String>,
    pub kv_store: Option<String>,
    /// UNIX time.
    pub last_modified: i64,
}

/// One `dialog` row (OpenSIPS 3 schema, plus `node`, `answer_time`, `session_expires`).
/// `caller_sock`/`callee_sock` hold how each side is reached (`udp:1.2.3.4:5060`); `state`
/// uses OpenSIPS' codes (4 = confirmed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialogRow {
    pub dlg_id: i64,
    pub callid: String,
    pub from_uri: String,
    pub from_tag: String,
    pub to_uri: String,
    pub to_tag: String,
    pub caller_cseq: i64,
    pub callee_cseq: i64,
    pub caller_contact: String,
    pub callee_contact: String,
    /// The Route value of a request toward each side (OpenSIPS' columns; NULL when none).
    pub caller_route_set: String,
    pub callee_route_set: String,
    pub caller_sock: String,
    pub callee_sock: String,
    pub state: i64,
    pub start_time: i64,
    /// UNIX time the dialog expires.
    pub timeout: i64,
    pub node: Option<String>,
    pub answer_time: Option<i64>,
    pub session_expires: Option<i64>,
    pub ruri: String,
}

/// A dialog change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogOp {
    Upsert(Box<DialogRow>),
    Delete(i64),
}

/// One accounted call: `acc` (answered) or `missed_calls` (failed), OpenSIPS columns plus
/// ours (users and domains, source, node, setup/answer/end times, who hung up). Read back
/// with owned strings; written from borrowed ones (`CdrRow<&str>`), so the writer copies
/// nothing out of the records it was handed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CdrRow<S = String> {
    pub answered: bool,
    pub callid: S,
    pub from_tag: S,
    pub to_tag: S,
    pub sip_code: u16,
    pub sip_reason: S,
    pub from_user: S,
    pub from_domain: S,
    pub to_user: S,
    pub to_domain: S,
    pub ruri_user: S,
    pub ruri_domain: S,
    pub src_ip: S,
    pub node: Option<S>,
    /// UNIX times.
    pub setup_time: i64,
    pub answer_time: Option<i64>,
    pub end_time: i64,
    pub duration: i64,
    pub hangup_by: S,
}

/// One `load_balancer` row (OpenSIPS 3 schema, version 3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadBalancerRow {
    pub id: i64,
    pub group_id: i64,
    pub dst_uri: String,
    pub resources: String,
    pub probe_mode: i64,
    pub attrs: Option<String>,
    pub description: Option<String>,
}

/// A row of OpenSIPS' `rtpengine` table: `socket` holds one or more instances
/// (`udp:10.0.0.7:2223=2 udp:10.0.0.8:2223`, a weight after `=`), all in set `set_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpengineRow {
    pub id: i64,
    pub socket: String,
    pub set_id: i64,
}

/// A location change.
#[derive(Debug, Clone, PartialEq)]
pub enum LocationOp {
    Upsert(Box<LocationRow>),
    Delete(i64),
}

/// A row that could not be read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub id: Option<i64>,
    pub reason: String,
}

/// A SQLite database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    schema: std::sync::Arc<Schema>,
}

/// The columns of the tables whose layout differs between OpenSIPS' own schema and the one
/// switchboard creates (`acc`, `missed_calls`, `dialog`: ours has more columns). Read from the
/// database when first written, and again after a failed write in case a table changed. A
/// table without some of our columns gets what it has; what is not written, and why, is
/// logged once.
#[derive(Debug, Default)]
struct Schema {
    tables: std::sync::Mutex<std::collections::HashMap<&'static str, std::sync::Arc<Columns>>>,
    told: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

/// A table's columns.
#[derive(Debug, Default)]
struct Columns {
    names: Vec<String>,
    /// NOT NULL without a default and not the key: an INSERT must give them.
    required: Vec<String>,
}

impl Columns {
    fn has(&self, c: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(c))
    }
}

/// Columns of `dialog` written only where the table has them: switchboard's additions
/// (`node`, `answer_time`, `session_expires`, `ruri`), and OpenSIPS 3's ping CSeqs (NOT NULL
/// without a default in its schema version 12; they start at the dialog's CSeqs).
const DIALOG_EXTRA: [&str; 6] = [
    "node",
    "answer_time",
    "session_expires",
    "ruri",
    "caller_ping_cseq",
    "callee_ping_cseq",
];

const CREATE_DISPATCHER: &str = "CREATE TABLE IF NOT EXISTS dispatcher (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    setid INTEGER DEFAULT 0 NOT NULL,
    destination CHAR(192) DEFAULT '' NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    weight CHAR(64) DEFAULT 1 NOT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(128) DEFAULT NULL,
    description CHAR(64) DEFAULT NULL
)";

const CREATE_SUBSCRIBER: &str = "CREATE TABLE IF NOT EXISTS subscriber (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    username CHAR(64) DEFAULT '' NOT NULL,
    domain CHAR(64) DEFAULT '' NOT NULL,
    password CHAR(25) DEFAULT '' NOT NULL,
    email_address CHAR(64) DEFAULT NULL,
    ha1 CHAR(64) DEFAULT '' NOT NULL,
    ha1_sha256 CHAR(64) DEFAULT '' NOT NULL,
    ha1_sha512t256 CHAR(64) DEFAULT '' NOT NULL,
    rpid CHAR(255) DEFAULT NULL,
    CONSTRAINT subscriber_account_idx UNIQUE (username, domain)
)";

const CREATE_LOCATION: &str = "CREATE TABLE IF NOT EXISTS location (
    contact_id INTEGER PRIMARY KEY NOT NULL,
    username CHAR(64) DEFAULT '' NOT NULL,
    domain CHAR(64) DEFAULT NULL,
    contact TEXT NOT NULL,
    received CHAR(255) DEFAULT NULL,
    path CHAR(255) DEFAULT NULL,
    expires INTEGER NOT NULL,
    q FLOAT(10,2) DEFAULT 1.0 NOT NULL,
    callid CHAR(255) DEFAULT 'Default-Call-ID' NOT NULL,
    cseq INTEGER DEFAULT 13 NOT NULL,
    last_modified INTEGER DEFAULT 0 NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL,
    cflags CHAR(255) DEFAULT NULL,
    user_agent CHAR(255) DEFAULT '' NOT NULL,
    socket CHAR(64) DEFAULT NULL,
    methods INTEGER DEFAULT NULL,
    sip_instance CHAR(255) DEFAULT NULL,
    kv_store TEXT(512) DEFAULT NULL,
    attr CHAR(255) DEFAULT NULL
)";

const CREATE_DIALOG: &str = "CREATE TABLE IF NOT EXISTS dialog (
    dlg_id INTEGER PRIMARY KEY NOT NULL,
    callid CHAR(255) NOT NULL,
    from_uri CHAR(255) NOT NULL,
    from_tag CHAR(64) NOT NULL,
    to_uri CHAR(255) NOT NULL,
    to_tag CHAR(64) NOT NULL,
    mangled_from_uri CHAR(255) DEFAULT NULL,
    mangled_to_uri CHAR(255) DEFAULT NULL,
    caller_cseq CHAR(11) NOT NULL,
    callee_cseq CHAR(11) NOT NULL,
    caller_ping_cseq INTEGER DEFAULT 0 NOT NULL,
    callee_ping_cseq INTEGER DEFAULT 0 NOT NULL,
    caller_route_set TEXT DEFAULT NULL,
    callee_route_set TEXT DEFAULT NULL,
    caller_contact CHAR(255) NOT NULL,
    callee_contact CHAR(255) NOT NULL,
    caller_sock CHAR(64) NOT NULL,
    callee_sock CHAR(64) NOT NULL,
    state INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    timeout INTEGER NOT NULL,
    vars TEXT DEFAULT NULL,
    profiles TEXT DEFAULT NULL,
    script_flags INTEGER DEFAULT 0 NOT NULL,
    module_flags INTEGER DEFAULT 0 NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL,
    node CHAR(255) DEFAULT NULL,
    answer_time INTEGER DEFAULT NULL,
    session_expires INTEGER DEFAULT NULL,
    ruri CHAR(255) DEFAULT '' NOT NULL
)";

const CREATE_LOAD_BALANCER: &str = "CREATE TABLE IF NOT EXISTS load_balancer (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    group_id INTEGER DEFAULT 0 NOT NULL,
    dst_uri CHAR(128) NOT NULL,
    resources CHAR(255) NOT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL
)";

const CREATE_RTPENGINE: &str = "CREATE TABLE IF NOT EXISTS rtpengine (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    socket TEXT NOT NULL,
    set_id INTEGER NOT NULL
)";

const ACC_COLUMNS: &str = "
    id INTEGER PRIMARY KEY NOT NULL,
    method CHAR(16) DEFAULT '' NOT NULL,
    from_tag CHAR(64) DEFAULT '' NOT NULL,
    to_tag CHAR(64) DEFAULT '' NOT NULL,
    callid CHAR(64) DEFAULT '' NOT NULL,
    sip_code CHAR(3) DEFAULT '' NOT NULL,
    sip_reason CHAR(32) DEFAULT '' NOT NULL,
    time DATETIME NOT NULL,
    from_user CHAR(64) DEFAULT '' NOT NULL,
    from_domain CHAR(64) DEFAULT '' NOT NULL,
    to_user CHAR(64) DEFAULT '' NOT NULL,
    to_domain CHAR(64) DEFAULT '' NOT NULL,
    ruri_user CHAR(64) DEFAULT '' NOT NULL,
    ruri_domain CHAR(64) DEFAULT '' NOT NULL,
    src_ip CHAR(64) DEFAULT '' NOT NULL,
    node CHAR(255) DEFAULT NULL,
    setup_time INTEGER DEFAULT 0 NOT NULL,
    answer_time INTEGER DEFAULT NULL,
    end_time INTEGER DEFAULT 0 NOT NULL,
    hangup_by CHAR(16) DEFAULT '' NOT NULL";

const CREATE_VERSION: &str = "CREATE TABLE IF NOT EXISTS version (
    table_name CHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_t_name_idx UNIQUE (table_name)
)";

/// Rows per statement in the batched writers: 50 at most, and only these counts. Each
/// distinct count is another prepared statement in sqlx's cache of each connection, and a
/// 50-row statement holds about 100 KB in SQLite: with every count from 1 to 50 cached, the
/// writers held about 9 MB (0.9 KB per dialog in the 10,000-dialog benchmark).
const CHUNKS: [usize; 7] = [50, 32, 16, 8, 4, 2, 1];

/// `items` in consecutive pieces whose lengths are in [`CHUNKS`], largest first.
fn pieces<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    while !items.is_empty() {
        let n = CHUNKS
            .iter()
            .copied()
            .find(|&c| c <= items.len())
            .unwrap_or(1);
        let (a, b) = items.split_at(n);
        out.push(a);
        items = b;
    }
    out
}

/// Splits `ops` into runs of the same kind (`is_upsert`), in order and in [`pieces`]:
/// consecutive upserts become one multi-row statement, consecutive deletes one `IN`.
fn runs<T>(ops: &[T], is_upsert: impl Fn(&T) -> bool) -> Vec<(bool, &[T])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let kind = is_upsert(&ops[i]);
        let mut j = i;
        while j < ops.len() && is_upsert(&ops[j]) == kind {
            j += 1;
        }
        out.extend(pieces(&ops[i..j]).into_iter().map(|p| (kind, p)));
        i = j;
    }
    out
}

/// `head` followed by `n` copies of the `row` placeholder group, comma-separated.
fn multi_row(head: &str, row: &str, n: usize) -> String {
    let mut sql = String::with_capacity(head.len() + n * (row.len() + 1));
    sql.push_str(head);
    for k in 0..n {
        if k > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
    sql
}

/// The CDR writer on SQLite's C API.
mod raw {
    use super::CdrRow;
    use libsqlite3_sys as ffi;
    use std::ffi::{c_int, CStr, CString};

    /// What a CDR column holds. A table gets the columns it has of these (an `acc` table made
    /// by OpenSIPS' own schema has no `from_user`, `node`, ...: those are not written there).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Field {
        Method,
        FromTag,
        ToTag,
        CallId,
        Code,
        Reason,
        Time,
        FromUser,
        FromDomain,
        ToUser,
        ToDomain,
        RuriUser,
        RuriDomain,
        SrcIp,
        Node,
        SetupTime,
        AnswerTime,
        EndTime,
        HangupBy,
        Duration,
        MsDuration,
        Setuptime,
        Created,
    }

    /// Every column the CDR writer knows, by name.
    pub const FIELDS: [(&str, Field); 23] = [
        ("method", Field::Method),
        ("from_tag", Field::FromTag),
        ("to_tag", Field::ToTag),
        ("callid", Field::CallId),
        ("sip_code", Field::Code),
        ("sip_reason", Field::Reason),
        ("time", Field::Time),
        ("from_user", Field::FromUser),
        ("from_domain", Field::FromDomain),
        ("to_user", Field::ToUser),
        ("to_domain", Field::ToDomain),
        ("ruri_user", Field::RuriUser),
        ("ruri_domain", Field::RuriDomain),
        ("src_ip", Field::SrcIp),
        ("node", Field::Node),
        ("setup_time", Field::SetupTime),
        ("answer_time", Field::AnswerTime),
        ("end_time", Field::EndTime),
        ("hangup_by", Field::HangupBy),
        ("duration", Field::Duration),
        ("ms_duration", Field::MsDuration),
        ("setuptime", Field::Setuptime),
        ("created", Field::Created),
    ];

    /// The INSERT of one row into `table` with `fields`.
    fn insert_sql(table: &str, fields: &[Field]) -> String {
        let names: Vec<&str> = fields
            .iter()
            .filter_map(|f| FIELDS.iter().find(|(_, g)| g == f).map(|(n, _)| *n))
            .collect();
        format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        )
    }

    unsafe fn errmsg(db: *mut ffi::sqlite3) -> String {
        let m = ffi::sqlite3_errmsg(db);
        if m.is_null() {
            "unknown SQLite error".into()
        } else {
            CStr::from_ptr(m).to_string_lossy().into_owned()
        }
    }

    unsafe fn exec(db: *mut ffi::sqlite3, sql: &str) -> Result<(), String> {
        let c = CString::new(sql).map_err(|e| e.to_string())?;
        if ffi::sqlite3_exec(
            db,
            c.as_ptr(),
            None,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ) != ffi::SQLITE_OK
        {
            return Err(errmsg(db));
        }
        Ok(())
    }

    /// A prepared statement, finalized on drop.
    struct Stmt(*mut ffi::sqlite3_stmt);

    impl Drop for Stmt {
        fn drop(&mut self) {
            // SAFETY: a statement from sqlite3_prepare_v2, finalized once.
            unsafe {
                ffi::sqlite3_finalize(self.0);
            }
        }
    }

    unsafe fn text(st: &Stmt, i: c_int, v: &str) -> c_int {
        // SQLITE_STATIC: `v` outlives the step that reads it
        ffi::sqlite3_bind_text(
            st.0,
            i,
            v.as_ptr().cast(),
            v.len() as c_int,
            ffi::SQLITE_STATIC(),
        )
    }

    fn ascii(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap_or("")
    }

    unsafe fn int(st: &Stmt, i: c_int, v: Option<i64>) -> c_int {
        match v {
            Some(v) => ffi::sqlite3_bind_int64(st.0, i, v),
            None => ffi::sqlite3_bind_null(st.0, i),
        }
    }

    unsafe fn prepare(db: *mut ffi::sqlite3, sql: &str) -> Result<Stmt, String> {
        let mut st = std::ptr::null_mut();
        if ffi::sqlite3_prepare_v2(
            db,
            sql.as_ptr().cast(),
            sql.len() as c_int,
            &mut st,
            std::ptr::null_mut(),
        ) != ffi::SQLITE_OK
        {
            return Err(errmsg(db));
        }
        Ok(Stmt(st))
    }

    /// The texts a row binds that are not in it (SQLITE_STATIC: they must outlive the step).
    struct Derived {
        code: [u8; 3],
        time: [u8; 19],
        created: [u8; 19],
    }

    /// Binds `r` to the statement's columns, `fields` in order.
    unsafe fn bind<S: AsRef<str>>(
        st: &Stmt,
        fields: &[Field],
        r: &CdrRow<S>,
        d: &Derived,
    ) -> c_int {
        let mut rc = 0;
        for (i, f) in fields.iter().enumerate() {
            let i = i as c_int + 1;
            rc |= match f {
                Field::Method => text(st, i, "INVITE"),
                Field::FromTag => text(st, i, r.from_tag.as_ref()),
                Field::ToTag => text(st, i, r.to_tag.as_ref()),
                Field::CallId => text(st, i, r.callid.as_ref()),
                Field::Code => text(st, i, ascii(&d.code)),
                Field::Reason => text(st, i, r.sip_reason.as_ref()),
                Field::Time => text(st, i, ascii(&d.time)),
                Field::FromUser => text(st, i, r.from_user.as_ref()),
                Field::FromDomain => text(st, i, r.from_domain.as_ref()),
                Field::ToUser => text(st, i, r.to_user.as_ref()),
                Field::ToDomain => text(st, i, r.to_domain.as_ref()),
                Field::RuriUser => text(st, i, r.ruri_user.as_ref()),
                Field::RuriDomain => text(st, i, r.ruri_domain.as_ref()),
                Field::SrcIp => text(st, i, r.src_ip.as_ref()),
                Field::Node => match &r.node {
                    Some(v) => text(st, i, v.as_ref()),
                    None => ffi::sqlite3_bind_null(st.0, i),
                },
                Field::SetupTime => int(st, i, Some(r.setup_time)),
                Field::AnswerTime => int(st, i, r.answer_time),
                Field::EndTime => int(st, i, Some(r.end_time)),
                Field::HangupBy => text(st, i, r.hangup_by.as_ref()),
                Field::Duration => int(st, i, Some(r.duration)),
                Field::MsDuration => int(st, i, Some(r.duration * 1000)),
                Field::Setuptime => int(
                    st,
                    i,
                    Some(r.answer_time.unwrap_or(r.setup_time) - r.setup_time),
                ),
                Field::Created => text(st, i, ascii(&d.created)),
            };
        }
        rc
    }

    unsafe fn step(db: *mut ffi::sqlite3, st: &Stmt, rc: c_int) -> Result<(), String> {
        let ok = rc == ffi::SQLITE_OK && ffi::sqlite3_step(st.0) == ffi::SQLITE_DONE;
        let e = (!ok).then(|| errmsg(db));
        ffi::sqlite3_reset(st.0);
        e.map_or(Ok(()), Err)
    }

    unsafe fn rows<S: AsRef<str>>(
        db: *mut ffi::sqlite3,
        table: &str,
        fields: &[Field],
        rows: &[&CdrRow<S>],
    ) -> Result<(), String> {
        let st = prepare(db, &insert_sql(table, fields))?;
        for r in rows {
            let d = Derived {
                code: super::code_text(r.sip_code),
                time: super::sql_datetime(r.answer_time.unwrap_or(r.end_time)),
                created: super::sql_datetime(r.setup_time),
            };
            step(db, &st, bind(&st, fields, r, &d))?;
        }
        Ok(())
    }

    /// Inserts the records in one transaction (rolled back on any error): answered calls into
    /// `acc` with `acc_fields`, failed ones into `missed_calls` with `missed_fields`.
    ///
    /// # Safety
    /// `db` must be an open connection no other thread uses meanwhile.
    pub unsafe fn insert_cdrs<S: AsRef<str>>(
        db: *mut ffi::sqlite3,
        all: &[CdrRow<S>],
        acc_fields: &[Field],
        missed_fields: &[Field],
    ) -> Result<(), String> {
        exec(db, "BEGIN")?;
        let answered: Vec<&CdrRow<S>> = all.iter().filter(|r| r.answered).collect();
        let missed: Vec<&CdrRow<S>> = all.iter().filter(|r| !r.answered).collect();
        let r = (|| {
            if !answered.is_empty() {
                rows(db, "acc", acc_fields, &answered)?;
            }
            if !missed.is_empty() {
                rows(db, "missed_calls", missed_fields, &missed)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => exec(db, "COMMIT").inspect_err(|_| {
                let _ = exec(db, "ROLLBACK");
            }),
            Err(e) => {
                let _ = exec(db, "ROLLBACK");
                Err(e)
            }
        }
    }
}

/// A SIP status code as the three digits of the `sip_code` column.
fn code_text(c: u16) -> [u8; 3] {
    let c = c.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

/// A UNIX time as SQL's `YYYY-MM-DD HH:MM:SS` (UTC; what SQLite's `datetime(t,
/// 'unixepoch')` gives), for the DATETIME columns. Days to civil date after Howard Hinnant's
/// published algorithm; times before 1970 and after 9999 are clamped.
fn sql_datetime(t: i64) -> [u8; 19] {
    let t = t.clamp(0, 253_402_300_799);
    let (days, secs) = (t / 86_400, t % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = *b"0000-00-00 00:00:00";
    let mut put = |at: usize, v: i64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, secs / 3600, 2);
    put(14, secs / 60 % 60, 2);
    put(17, secs % 60, 2);
    out
}

/// `DELETE FROM table WHERE column IN (?, ?, ...)` for `n` ids.
fn delete_in(table: &str, column: &str, n: usize) -> String {
    format!(
        "DELETE FROM {table} WHERE {column} IN ({})",
        vec!["?"; n].join(", ")
    )
}

impl Store {
    /// Opens (creating the file if needed) `sqlite://PATH` and creates missing tables.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let path = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| StoreError::Url(url.to_string()))?;
        if path.is_empty() {
            return Err(StoreError::Url(url.to_string()));
        }
        // WAL with synchronous=NORMAL: a commit is an append, not a journal file created and
        // deleted; durable across a crash of switchboard (not of the OS), which is what the
        // write-behind of location, dialogs and CDRs needs.
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?;
        let s = Store {
            pool,
            schema: Default::default(),
        };
        s.migrate().await?;
        Ok(s)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query(CREATE_VERSION).execute(&self.pool).await?;
        sqlx::query(CREATE_DISPATCHER).execute(&self.pool).await?;
        sqlx::query(CREATE_SUBSCRIBER).execute(&self.pool).await?;
        sqlx::query(CREATE_LOCATION).execute(&self.pool).await?;
        sqlx::query(CREATE_DIALOG).execute(&self.pool).await?;
        sqlx::query(CREATE_LOAD_BALANCER)
            .execute(&self.pool)
            .await?;
        sqlx::query(CREATE_RTPENGINE).execute(&self.pool).await?;
        sqlx::query(&format!("CREATE TABLE IF NOT EXISTS acc ({ACC_COLUMNS},\n    duration INTEGER DEFAULT 0 NOT NULL,\n    ms_duration INTEGER DEFAULT 0 NOT NULL,\n    setuptime INTEGER DEFAULT 0 NOT NULL,\n    created DATETIME DEFAULT NULL)"))
            .execute(&self.pool)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS missed_calls ({ACC_COLUMNS})"
        ))
        .execute(&self.pool)
        .await?;
        for t in numbers::CREATE {
            sqlx::query(t).execute(&self.pool).await?;
        }
        sqlx::query(&format!(
            "INSERT OR IGNORE INTO version (table_name, table_version) VALUES ('dispatcher', 9), ('subscriber', 8), ('location', 1013), ('dialog', 10), ('acc', 7), ('missed_calls', 5), ('load_balancer', 3), ('rtpengine', 1), {}",
            numbers::VERSIONS
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The columns `table` has (cached; see [`Schema`]).
    async fn columns(&self, table: &'static str) -> Result<std::sync::Arc<Columns>, StoreError> {
        if let Some(c) = self
            .schema
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(table)
        {
            return Ok(c.clone());
        }
        let rows = sqlx::query(
            "SELECT name, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1)",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::Sqlite(format!("no such table: {table}")));
        }
        let mut c = Columns::default();
        for r in rows {
            let name: String = r.try_get(0).unwrap_or_default();
            let not_null: i64 = r.try_get(1).unwrap_or(0);
            let has_default: bool = r.try_get(2).unwrap_or(false);
            let pk: i64 = r.try_get(3).unwrap_or(0);
            if not_null != 0 && !has_default && pk == 0 {
                c.required.push(name.clone());
            }
            c.names.push(name);
        }
        let c = std::sync::Arc::new(c);
        self.schema
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table, c.clone());
        Ok(c)
    }

    /// Forgets the cached columns (after a failed write: a table may have changed).
    fn forget_columns(&self) {
        self.schema
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Says once per table which of `ours` it lacks (not written) and which of its required
    /// columns switchboard does not fill (every insert would fail); `also` are columns
    /// written where they exist without being missed where they do not.
    fn tell_once(&self, table: &'static str, ours: &[&str], also: &[&str], c: &Columns) {
        let missing: Vec<&str> = ours.iter().copied().filter(|o| !c.has(o)).collect();
        let unfilled: Vec<&str> = c
            .required
            .iter()
            .map(String::as_str)
            .filter(|r| !ours.iter().chain(also).any(|o| o.eq_ignore_ascii_case(r)))
            .collect();
        if (missing.is_empty() && unfilled.is_empty())
            || !self
                .schema
                .told
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(table)
        {
            return;
        }
        if !missing.is_empty() {
            tracing::warn!(
                table,
                columns = %missing.join(", "),
                "the table has not these columns (an OpenSIPS schema?): they are not written"
            );
        }
        if !unfilled.is_empty() {
            tracing::error!(
                table,
                columns = %unfilled.join(", "),
                "the table requires columns switchboard does not write: inserts will fail until they get a default"
            );
        }
    }

    /// The CDR columns `table` has, in [`raw::FIELDS`] order.
    async fn cdr_fields(&self, table: &'static str) -> Result<Vec<raw::Field>, StoreError> {
        let c = self.columns(table).await?;
        let ours: Vec<&str> = raw::FIELDS.iter().map(|(n, _)| *n).collect();
        self.tell_once(table, &ours, &[], &c);
        Ok(raw::FIELDS
            .iter()
            .filter(|(n, _)| c.has(n))
            .map(|(_, f)| *f)
            .collect())
    }

    // ----- subscriber ----------------------------------------------------------------

    /// Every `subscriber` row: the readable ones, and the others with the reason.
    pub async fn subscriber_rows(&self) -> Result<(Vec<SubscriberRow>, Vec<BadRow>), StoreError> {
        let rows = sqlx::query("SELECT id, username, domain, password, ha1, ha1_sha256, email_address FROM subscriber ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("id").ok();
            let text = |c: &str| {
                r.try_get::<Option<String>, _>(c)
                    .map(Option::unwrap_or_default)
                    .map_err(|_| format!("column {c} is not text"))
            };
            let read = || -> Result<SubscriberRow, String> {
                Ok(SubscriberRow {
                    username: text("username")?,
                    domain: text("domain")?,
                    password: text("password")?,
                    ha1: text("ha1")?,
                    ha1_sha256: text("ha1_sha256")?,
                    email_address: text("email_address")?,
                })
            };
            match read() {
                Ok(row) if row.username.is_empty() => bad.push(BadRow {
                    id,
                    reason: "empty username".into(),
                }),
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
    }

    /// Adds or replaces a subscriber (by username and domain).
    pub async fn upsert_subscriber(&self, s: &SubscriberRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM subscriber WHERE username = ? AND domain = ?")
            .bind(&s.username)
            .bind(&s.domain)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO subscriber (username, domain, password, ha1, ha1_sha256, email_address) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&s.username)
            .bind(&s.domain)
            .bind(&s.password)
            .bind(&s.ha1)
            .bind(&s.ha1_sha256)
            .bind(&s.email_address)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a subscriber; returns the rows removed.
    pub async fn delete_subscriber(&self, username: &str, domain: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM subscriber WHERE username = ? AND domain = ?")
                .bind(username)
                .bind(domain)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    // ----- location --------------------------------------------------------------------

    /// Every `location` row.
    pub async fn location_rows(&self) -> Result<(Vec<LocationRow>, Vec<BadRow>), StoreError> {
        let rows = sqlx::query("SELECT contact_id, username, domain, contact, received, path, expires, q, callid, cseq, cflags, user_agent, sip_instance, kv_store, last_modified FROM location ORDER BY contact_id")
            .fetch_all(&self.pool)
            .await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("contact_id").ok();
            let read = || -> Result<LocationRow, String> {
                let int = |c: &str| {
                    r.try_get::<i64, _>(c)
                        .map_err(|_| format!("column {c} is not an integer"))
                };
                let text = |c: &str| {
                    r.try_get::<Option<String>, _>(c)
                        .map_err(|_| format!("column {c} is not text"))
                };
                Ok(LocationRow {
                    contact_id: int("contact_id")?,
                    username: text("username")?.unwrap_or_default(),
                    domain: text("domain")?.unwrap_or_default(),
                    contact: text("contact")?.unwrap_or_default(),
                    received: text("received")?,
                    path: text("path")?,
                    expires: int("expires")?,
                    q: r.try_get::<f64, _>("q")
                        .map_err(|_| "column q is not a number".to_string())?,
                    callid: text("callid")?.unwrap_or_default(),
                    cseq: int("cseq")?,
                    cflags: text("cflags")?.unwrap_or_default(),
                    user_agent: text("user_agent")?.unwrap_or_default(),
                    sip_instance: text("sip_instance")?,
                    kv_store: text("kv_store")?,
                    last_modified: int("last_modified").unwrap_or(0),
                })
            };
            match read() {
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
    }

    /// Applies a batch of location changes in one transaction (the write-behind flush).
    /// Consecutive upserts go as multi-row `INSERT OR REPLACE` statements (up to 50 rows),
    /// consecutive deletes as one `IN` list each: order is kept between the runs.
    pub async fn apply_location(&self, ops: &[LocationOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (upsert, run) in runs(ops, |o| matches!(o, LocationOp::Upsert(_))) {
            if upsert {
                let sql = multi_row("INSERT OR REPLACE INTO location (contact_id, username, domain, contact, received, path, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, socket, methods, sip_instance, kv_store) VALUES ", "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, NULL, ?, ?)", run.len());
                let mut q = sqlx::query(&sql);
                for op in run {
                    if let LocationOp::Upsert(l) = op {
                        q = q
                            .bind(l.contact_id)
                            .bind(&l.username)
                            .bind(&l.domain)
                            .bind(&l.contact)
                            .bind(&l.received)
                            .bind(&l.path)
                            .bind(l.expires)
                            .bind(l.q)
                            .bind(&l.callid)
                            .bind(l.cseq)
                            .bind(l.last_modified)
                            .bind(&l.cflags)
                            .bind(&l.user_agent)
                            .bind(&l.sip_instance)
                            .bind(&l.kv_store);
                    }
                }
                q.execute(&mut *tx).await?;
            } else {
                let sql = delete_in("location", "contact_id", run.len());
                let mut q = sqlx::query(&sql);
                for op in run {
                    if let LocationOp::Delete(id) = op {
                        q = q.bind(*id);
                    }
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every `dispatcher` row: the readable ones, and the others with the reason.
    pub async fn dispatcher_rows(&self) -> Result<(Vec<DispatcherRow>, Vec<BadRow>), StoreError> {
        let rows = sqlx::query("SELECT id, setid, destination, socket, state, probe_mode, weight, priority, attrs, description FROM dispatcher ORDER BY id").fetch_all(&self.pool).await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("id").ok();
            let read = || -> Result<DispatcherRow, String> {
                let int = |c: &str| {
                    r.try_get::<i64, _>(c)
                        .map_err(|_| format!("column {c} is not an integer"))
                };
                let opt_text = |c: &str| {
                    r.try_get::<Option<String>, _>(c)
                        .map_err(|_| format!("column {c} is not text"))
                };
                let weight = match r.try_get::<String, _>("weight") {
                    Ok(w) => w,
                    Err(_) => int("weight").map(|w| w.to_string())?,
                };
                Ok(DispatcherRow {
                    id: int("id")?,
                    setid: int("setid")?,
                    destination: r
                        .try_get("destination")
                        .map_err(|_| "column destination is not text".to_string())?,
                    socket: opt_text("socket")?,
                    state: int("state")?,
                    probe_mode: int("probe_mode")?,
                    weight,
                    priority: int("priority")?,
                    attrs: opt_text("attrs")?,
                    description: opt_text("description")?,
                })
            };
            match read() {
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
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
        let r = sqlx::query("INSERT INTO dispatcher (setid, destination, state, weight, priority, attrs, description) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(setid)
            .bind(destination)
            .bind(state)
            .bind(weight)
            .bind(priority)
            .bind(attrs)
            .bind(description)
            .execute(&self.pool)
            .await?;
        Ok(r.last_insert_rowid())
    }

    /// Deletes a set's destination; returns the rows removed.
    pub async fn delete_dispatcher(
        &self,
        setid: i64,
        destination: &str,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM dispatcher WHERE setid = ? AND destination = ?")
                .bind(setid)
                .bind(destination)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Writes a destination's state (OpenSIPS codes: 0 active, 1 inactive, 2 probing).
    pub async fn set_dispatcher_state(
        &self,
        setid: i64,
        destination: &str,
        state: i64,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE dispatcher SET state = ? WHERE setid = ? AND destination = ?")
                .bind(state)
                .bind(setid)
                .bind(destination)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Every `dialog` row.
    pub async fn dialog_rows(&self) -> Result<(Vec<DialogRow>, Vec<BadRow>), StoreError> {
        let c = self.columns("dialog").await?;
        let extra: Vec<String> = DIALOG_EXTRA[..4]
            .iter()
            .map(|e| {
                if c.has(e) {
                    e.to_string()
                } else {
                    format!("NULL AS {e}")
                }
            })
            .collect();
        let rows = sqlx::query(&format!("SELECT dlg_id, callid, from_uri, from_tag, to_uri, to_tag, caller_cseq, callee_cseq, caller_contact, callee_contact, caller_route_set, callee_route_set, caller_sock, callee_sock, state, start_time, timeout, {} FROM dialog ORDER BY dlg_id", extra.join(", ")))
            .fetch_all(&self.pool)
            .await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("dlg_id").ok();
            let read = || -> Result<DialogRow, String> {
                let int = |c: &str| {
                    r.try_get::<i64, _>(c)
                        .map_err(|_| format!("column {c} is not an integer"))
                };
                let text = |c: &str| {
                    r.try_get::<String, _>(c)
                        .map_err(|_| format!("column {c} is not text"))
                };
                let opt_text = |c: &str| {
                    r.try_get::<Option<String>, _>(c)
                        .map(Option::unwrap_or_default)
                        .map_err(|_| format!("column {c} is not text"))
                };
                // OpenSIPS keeps the CSeqs as text
                let cseq = |c: &str| {
                    int(c).or_else(|_| {
                        text(c).and_then(|t| {
                            t.trim()
                                .parse()
                                .map_err(|_| format!("column {c} is not a number"))
                        })
                    })
                };
                Ok(DialogRow {
                    dlg_id: int("dlg_id")?,
                    callid: text("callid")?,
                    from_uri: text("from_uri")?,
                    from_tag: text("from_tag")?,
                    to_uri: text("to_uri")?,
                    to_tag: text("to_tag")?,
                    caller_cseq: cseq("caller_cseq")?,
                    callee_cseq: cseq("callee_cseq")?,
                    caller_contact: text("caller_contact")?,
                    callee_contact: text("callee_contact")?,
                    caller_route_set: opt_text("caller_route_set")?,
                    callee_route_set: opt_text("callee_route_set")?,
                    caller_sock: text("caller_sock")?,
                    callee_sock: text("callee_sock")?,
                    state: int("state")?,
                    start_time: int("start_time")?,
                    timeout: int("timeout")?,
                    node: r
                        .try_get::<Option<String>, _>("node")
                        .map_err(|_| "column node is not text".to_string())?,
                    answer_time: r
                        .try_get::<Option<i64>, _>("answer_time")
                        .map_err(|_| "column answer_time is not an integer".to_string())?,
                    session_expires: r
                        .try_get::<Option<i64>, _>("session_expires")
                        .map_err(|_| "column session_expires is not an integer".to_string())?,
                    ruri: r
                        .try_get::<Option<String>, _>("ruri")
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                })
            };
            match read() {
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
    }

    /// Applies dialog changes in one transaction, in order: consecutive upserts as multi-row
    /// statements (up to 50 rows), consecutive deletes as one `IN` list each.
    pub async fn apply_dialogs(&self, ops: &[DialogOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let c = self.columns("dialog").await?;
        const BASE: [&str; 17] = [
            "dlg_id",
            "callid",
            "from_uri",
            "from_tag",
            "to_uri",
            "to_tag",
            "caller_cseq",
            "callee_cseq",
            "caller_contact",
            "callee_contact",
            "caller_route_set",
            "callee_route_set",
            "caller_sock",
            "callee_sock",
            "state",
            "start_time",
            "timeout",
        ];
        let ours: Vec<&str> = BASE.iter().chain(&DIALOG_EXTRA[..4]).copied().collect();
        self.tell_once("dialog", &ours, &DIALOG_EXTRA[4..], &c);
        let has: [bool; 6] = DIALOG_EXTRA.map(|e| c.has(e));
        let mut cols: Vec<&str> = BASE.to_vec();
        cols.extend(
            DIALOG_EXTRA
                .iter()
                .zip(has)
                .filter(|(_, h)| *h)
                .map(|(e, _)| *e),
        );
        let head = format!(
            "INSERT OR REPLACE INTO dialog ({}) VALUES ",
            cols.join(", ")
        );
        let row = format!("({})", vec!["?"; cols.len()].join(", "));
        let r = self.apply_dialogs_with(ops, &head, &row, has).await;
        if r.is_err() {
            self.forget_columns();
        }
        r
    }

    async fn apply_dialogs_with(
        &self,
        ops: &[DialogOp],
        head: &str,
        row: &str,
        has: [bool; 6],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (upsert, run) in runs(ops, |o| matches!(o, DialogOp::Upsert(_))) {
            if upsert {
                let sql = multi_row(head, row, run.len());
                let mut q = sqlx::query(&sql);
                for op in run {
                    if let DialogOp::Upsert(d) = op {
                        q = q
                            .bind(d.dlg_id)
                            .bind(&d.callid)
                            .bind(&d.from_uri)
                            .bind(&d.from_tag)
                            .bind(&d.to_uri)
                            .bind(&d.to_tag)
                            .bind(d.caller_cseq.to_string())
                            .bind(d.callee_cseq.to_string())
                            .bind(&d.caller_contact)
                            .bind(&d.callee_contact)
                            .bind(Some(&d.caller_route_set).filter(|r| !r.is_empty()))
                            .bind(Some(&d.callee_route_set).filter(|r| !r.is_empty()))
                            .bind(&d.caller_sock)
                            .bind(&d.callee_sock)
                            .bind(d.state)
                            .bind(d.start_time)
                            .bind(d.timeout);
                        if has[0] {
                            q = q.bind(&d.node);
                        }
                        if has[1] {
                            q = q.bind(d.answer_time);
                        }
                        if has[2] {
                            q = q.bind(d.session_expires);
                        }
                        if has[3] {
                            q = q.bind(&d.ruri);
                        }
                        if has[4] {
                            q = q.bind(d.caller_cseq);
                        }
                        if has[5] {
                            q = q.bind(d.callee_cseq);
                        }
                    }
                }
                q.execute(&mut *tx).await?;
            } else {
                let sql = delete_in("dialog", "dlg_id", run.len());
                let mut q = sqlx::query(&sql);
                for op in run {
                    if let DialogOp::Delete(id) = op {
                        q = q.bind(*id);
                    }
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every `load_balancer` row: the readable ones, and the others with the reason.
    pub async fn load_balancer_rows(
        &self,
    ) -> Result<(Vec<LoadBalancerRow>, Vec<BadRow>), StoreError> {
        let rows = sqlx::query("SELECT id, group_id, dst_uri, resources, probe_mode, attrs, description FROM load_balancer ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("id").ok();
            let read = || -> Result<LoadBalancerRow, String> {
                let int = |c: &str| {
                    r.try_get::<i64, _>(c)
                        .map_err(|_| format!("column {c} is not an integer"))
                };
                let text = |c: &str| {
                    r.try_get::<String, _>(c)
                        .map_err(|_| format!("column {c} is not text"))
                };
                let opt = |c: &str| {
                    r.try_get::<Option<String>, _>(c)
                        .map_err(|_| format!("column {c} is not text"))
                };
                Ok(LoadBalancerRow {
                    id: int("id")?,
                    group_id: int("group_id")?,
                    dst_uri: text("dst_uri")?,
                    resources: text("resources")?,
                    probe_mode: int("probe_mode")?,
                    attrs: opt("attrs")?,
                    description: opt("description")?,
                })
            };
            match read() {
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
    }

    /// Every `rtpengine` row: the readable ones, and the others with the reason.
    pub async fn rtpengine_rows(&self) -> Result<(Vec<RtpengineRow>, Vec<BadRow>), StoreError> {
        let rows = sqlx::query("SELECT id, socket, set_id FROM rtpengine ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in rows {
            let id: Option<i64> = r.try_get("id").ok();
            let read = || -> Result<RtpengineRow, String> {
                Ok(RtpengineRow {
                    id: r
                        .try_get::<i64, _>("id")
                        .map_err(|_| "column id is not an integer".to_string())?,
                    socket: r
                        .try_get::<String, _>("socket")
                        .map_err(|_| "column socket is not text".to_string())?,
                    set_id: r
                        .try_get::<i64, _>("set_id")
                        .map_err(|_| "column set_id is not an integer".to_string())?,
                })
            };
            match read() {
                Ok(row) => good.push(row),
                Err(reason) => bad.push(BadRow { id, reason }),
            }
        }
        Ok((good, bad))
    }

    /// Writes accounted calls, in one transaction: multi-row statements of up to 50 calls.
    pub async fn insert_cdrs<S: AsRef<str> + Sync>(
        &self,
        rows: &[CdrRow<S>],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        // Through SQLite's own statement API on the pooled connection, locked away from
        // sqlx's worker: one prepared statement per table, each column bound without a copy. Through sqlx
        // (a bound parameter per column, 50-row statements) a row cost 7.2 µs of CPU; this
        // way under 2 µs (BENCHMARKS.md, accounting).
        let acc = self.cdr_fields("acc").await?;
        let missed = self.cdr_fields("missed_calls").await?;
        let mut conn = self.pool.acquire().await?;
        let mut locked = conn.lock_handle().await?;
        let db = locked.as_raw_handle().as_ptr();
        // SAFETY: `db` is a live connection handle that sqlx's worker does not touch while
        // `locked` exists; every statement is finalized before returning.
        unsafe { raw::insert_cdrs(db, rows, &acc, &missed) }
            .map_err(StoreError::Sqlite)
            .inspect_err(|_| self.forget_columns())
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
        // a table made by OpenSIPS' schema lacks our columns: read them as empty, and take
        // the end of the call from its `time` (and `duration`)
        let pick = |c: &Columns, answered: bool| -> String {
            let col = |n: &str, dflt: &str| {
                if c.has(n) {
                    n.to_string()
                } else {
                    format!("{dflt} AS {n}")
                }
            };
            let secs = "CAST(strftime('%s', time) AS INTEGER)";
            let end = if c.has("end_time") {
                "end_time".to_string()
            } else if answered && c.has("duration") {
                format!("{secs} + duration")
            } else {
                secs.to_string()
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
            format!(
                "SELECT {} AS answered, callid, from_tag, to_tag, sip_code, sip_reason, {texts}, {}, {}, {}, {end} AS end_time, {}, {} FROM {} WHERE {end} >= ?1",
                answered as i32,
                col("node", "NULL"),
                col("setup_time", "0"),
                col("answer_time", "NULL"),
                if answered { col("duration", "0") } else { "0".into() },
                col("hangup_by", "''"),
                if answered { "acc" } else { "missed_calls" },
            )
        };
        let q = &format!(
            "{} UNION ALL {} ORDER BY end_time {} LIMIT ?2",
            pick(&acc, true),
            pick(&missed, false),
            if newest_first { "DESC" } else { "ASC" }
        );
        let rows = sqlx::query(q)
            .bind(since)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| CdrRow {
                answered: r.try_get::<i64, _>(0).unwrap_or(0) == 1,
                callid: r.try_get(1).unwrap_or_default(),
                from_tag: r.try_get(2).unwrap_or_default(),
                to_tag: r.try_get(3).unwrap_or_default(),
                sip_code: r
                    .try_get::<String, _>(4)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
                sip_reason: r.try_get(5).unwrap_or_default(),
                from_user: r.try_get(6).unwrap_or_default(),
                from_domain: r.try_get(7).unwrap_or_default(),
                to_user: r.try_get(8).unwrap_or_default(),
                to_domain: r.try_get(9).unwrap_or_default(),
                ruri_user: r.try_get(10).unwrap_or_default(),
                ruri_domain: r.try_get(11).unwrap_or_default(),
                src_ip: r.try_get(12).unwrap_or_default(),
                node: r.try_get(13).unwrap_or_default(),
                setup_time: r.try_get(14).unwrap_or_default(),
                answer_time: r.try_get(15).unwrap_or_default(),
                end_time: r.try_get(16).unwrap_or_default(),
                duration: r.try_get(17).unwrap_or_default(),
                hangup_by: r.try_get(18).unwrap_or_default(),
            })
            .collect())
    }

    /// Runs raw SQL (tests and tools that seed tables the way an OpenSIPS operator would).
    pub async fn execute(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql).execute(&self.pool).await?.rows_affected())
    }
}

#[cfg(test)]
mod tests;

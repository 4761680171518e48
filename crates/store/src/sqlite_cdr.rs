//! The CDR writer on SQLite's C API (the fast path: one prepared statement per table, each
//! column bound without a copy; see `Store::insert_cdrs`).

use crate::CdrRow;
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
unsafe fn bind<S: AsRef<str>>(st: &Stmt, fields: &[Field], r: &CdrRow<S>, d: &Derived) -> c_int {
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
            code: code_text(r.sip_code),
            time: sql_datetime(r.answer_time.unwrap_or(r.end_time)),
            created: sql_datetime(r.setup_time),
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

/// A SIP status code as the three digits of the `sip_code` column.
pub(crate) fn code_text(c: u16) -> [u8; 3] {
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
pub(crate) fn sql_datetime(t: i64) -> [u8; 19] {
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

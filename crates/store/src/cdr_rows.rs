//! Accounting records to the `acc` and `missed_calls` tables.

use crate::{CdrRow, Store, StoreError};

/// Writes accounting records; the rows borrow the records' text (and the source addresses,
/// formatted into one buffer), so nothing is copied per column. A record that cannot be turned
/// into a row (a panic) is dropped and logged; the result counts them.
pub async fn write_cdrs(
    s: &Store,
    records: &[sip_proxy::cdr::CallRecord],
) -> Result<usize, StoreError> {
    let mut srcs = String::with_capacity(records.len() * 21);
    let mut ends = Vec::with_capacity(records.len());
    for r in records {
        if let Some(a) = r.source {
            sip_wire::addr::push_socket_addr(&mut srcs, a);
        }
        ends.push(srcs.len());
    }
    let mut rows: Vec<CdrRow<&str>> = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for (i, r) in records.iter().enumerate() {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        let src = &srcs[start..ends[i]];
        match net::supervise::guard("acc", || cdr_row(r, src)) {
            Some(row) => rows.push(row),
            None => {
                skipped += 1;
                tracing::error!(
                    call_id = r.call_id(),
                    "CDR dropped: it could not be turned into a row"
                );
            }
        }
    }
    s.insert_cdrs(&rows).await?;
    Ok(skipped)
}

fn cdr_row<'a>(r: &'a sip_proxy::cdr::CallRecord, src_ip: &'a str) -> CdrRow<&'a str> {
    use sip_proxy::cdr::user_host;
    let (from_user, from_domain) = user_host(r.from_uri());
    let (to_user, to_domain) = user_host(r.to_uri());
    let (ruri_user, ruri_domain) = user_host(r.ruri());
    CdrRow {
        answered: r.answered,
        callid: r.call_id(),
        from_tag: r.from_tag(),
        to_tag: r.to_tag(),
        sip_code: r.code,
        sip_reason: &r.reason,
        from_user,
        from_domain,
        to_user,
        to_domain,
        ruri_user,
        ruri_domain,
        src_ip,
        node: r.node.as_deref(),
        setup_time: r.setup as i64,
        answer_time: r.answer.map(|a| a as i64),
        end_time: r.end as i64,
        duration: r.duration as i64,
        hangup_by: r.hangup_by,
    }
}

//! The tables: OpenSIPS 3 schemas (and the versions its tools look for in `version`), written
//! once in SQLite's words and rendered for PostgreSQL and MySQL the way OpenSIPS' own
//! scripts type them for each engine (VARCHAR and TIMESTAMP on PostgreSQL, unsigned
//! AUTO_INCREMENT keys and DATETIME on MySQL). Each table names the columns switchboard
//! needs (a table without one of them cannot be used) and the ones it writes where they exist
//! (switchboard's additions; a table made by OpenSIPS lacks them and works without).

use crate::sql::Dialect;

/// One table.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// The schema version OpenSIPS 3 gives it (0: not versioned).
    pub version: i64,
    /// Columns read or written whatever the schema's origin.
    pub needs: &'static [&'static str],
    /// Columns written and read where the table has them.
    pub optional: &'static [&'static str],
    /// `CREATE TABLE IF NOT EXISTS` in SQLite's words ([`render`] for the others).
    pub create: &'static str,
}

/// `location`'s columns, in the order switchboard writes them.
pub const LOCATION_COLUMNS: &[&str] = &[
    "contact_id",
    "username",
    "domain",
    "contact",
    "received",
    "path",
    "expires",
    "q",
    "callid",
    "cseq",
    "last_modified",
    "flags",
    "cflags",
    "user_agent",
    "socket",
    "methods",
    "sip_instance",
    "kv_store",
];

/// `dialog`'s columns every schema has, in the order switchboard writes them.
pub const DIALOG_COLUMNS: &[&str] = &[
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

/// switchboard's own `dialog` columns, written and read where the table has them.
pub const DIALOG_OURS: &[&str] = &["node", "answer_time", "session_expires", "ruri"];

/// The columns of `acc` and `missed_calls` every schema has.
pub const CDR_NEEDS: &[&str] = &[
    "method",
    "from_tag",
    "to_tag",
    "callid",
    "sip_code",
    "sip_reason",
    "time",
];

/// switchboard's (and OpenSIPS' later) `acc` columns, written and read where they exist.
pub const ACC_OPTIONAL: &[&str] = &[
    "from_user",
    "from_domain",
    "to_user",
    "to_domain",
    "ruri_user",
    "ruri_domain",
    "src_ip",
    "node",
    "setup_time",
    "answer_time",
    "end_time",
    "hangup_by",
    "duration",
    "ms_duration",
    "setuptime",
    "created",
];

/// The same for `missed_calls`.
pub const MISSED_OPTIONAL: &[&str] = &[
    "from_user",
    "from_domain",
    "to_user",
    "to_domain",
    "ruri_user",
    "ruri_domain",
    "src_ip",
    "node",
    "setup_time",
    "answer_time",
    "end_time",
    "hangup_by",
    "setuptime",
    "created",
];

/// The columns `acc` and `missed_calls` share (switchboard's schema).
macro_rules! cdr_columns {
    () => {
        "    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
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
    hangup_by CHAR(16) DEFAULT '' NOT NULL,
"
    };
}

/// Every table switchboard creates (`version` first).
pub const TABLES: [Table; 16] = [
    Table {
        name: "version",
        needs: &["table_name", "table_version"],
        optional: &[],
        version: 0,
        create: "CREATE TABLE IF NOT EXISTS version (
    table_name CHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_t_name_idx UNIQUE (table_name)
)",
    },
    Table {
        name: "dispatcher",
        needs: &[
            "id",
            "setid",
            "destination",
            "socket",
            "state",
            "weight",
            "priority",
            "attrs",
            "description",
        ],
        optional: &["probe_mode"],
        version: 9,
        create: "CREATE TABLE IF NOT EXISTS dispatcher (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    setid INTEGER DEFAULT 0 NOT NULL,
    destination CHAR(192) DEFAULT '' NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    weight CHAR(64) DEFAULT '1' NOT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(128) DEFAULT NULL,
    description CHAR(64) DEFAULT NULL
)",
    },
    Table {
        name: "subscriber",
        needs: &["id", "username", "domain", "password", "ha1"],
        optional: &["ha1_sha256", "email_address"],
        version: 8,
        create: "CREATE TABLE IF NOT EXISTS subscriber (
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
)",
    },
    Table {
        name: "location",
        needs: LOCATION_COLUMNS,
        optional: &[],
        version: 1013,
        create: "CREATE TABLE IF NOT EXISTS location (
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
)",
    },
    Table {
        name: "dialog",
        needs: DIALOG_COLUMNS,
        optional: DIALOG_OURS,
        version: 10,
        create: "CREATE TABLE IF NOT EXISTS dialog (
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
)",
    },
    Table {
        name: "load_balancer",
        needs: &[
            "id",
            "group_id",
            "dst_uri",
            "resources",
            "probe_mode",
            "attrs",
            "description",
        ],
        optional: &[],
        version: 3,
        create: "CREATE TABLE IF NOT EXISTS load_balancer (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    group_id INTEGER DEFAULT 0 NOT NULL,
    dst_uri CHAR(128) NOT NULL,
    resources CHAR(255) NOT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL
)",
    },
    Table {
        name: "rtpengine",
        needs: &["id", "socket", "set_id"],
        optional: &[],
        version: 1,
        create: "CREATE TABLE IF NOT EXISTS rtpengine (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    socket TEXT NOT NULL,
    set_id INTEGER NOT NULL
)",
    },
    Table {
        name: "acc",
        needs: CDR_NEEDS,
        optional: ACC_OPTIONAL,
        version: 7,
        create: concat!(
            "CREATE TABLE IF NOT EXISTS acc (\n",
            cdr_columns!(),
            "    duration INTEGER DEFAULT 0 NOT NULL,
    ms_duration INTEGER DEFAULT 0 NOT NULL,
    setuptime INTEGER DEFAULT 0 NOT NULL,
    created DATETIME DEFAULT NULL
)"
        ),
    },
    Table {
        name: "missed_calls",
        needs: CDR_NEEDS,
        optional: MISSED_OPTIONAL,
        version: 5,
        create: concat!(
            "CREATE TABLE IF NOT EXISTS missed_calls (\n",
            cdr_columns!(),
            "    setuptime INTEGER DEFAULT 0 NOT NULL,
    created DATETIME DEFAULT NULL
)"
        ),
    },
    Table {
        name: "dialplan",
        needs: &[
            "id",
            "dpid",
            "pr",
            "match_op",
            "match_exp",
            "match_flags",
            "subst_exp",
            "repl_exp",
            "timerec",
            "disabled",
            "attrs",
        ],
        optional: &[],
        version: 5,
        create: "CREATE TABLE IF NOT EXISTS dialplan (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    dpid INTEGER NOT NULL,
    pr INTEGER DEFAULT 0 NOT NULL,
    match_op INTEGER NOT NULL,
    match_exp CHAR(64) NOT NULL,
    match_flags INTEGER DEFAULT 0 NOT NULL,
    subst_exp CHAR(64) DEFAULT NULL,
    repl_exp CHAR(32) DEFAULT NULL,
    timerec CHAR(255) DEFAULT NULL,
    disabled INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL
)",
    },
    Table {
        name: "dr_gateways",
        needs: &[
            "id",
            "gwid",
            "type",
            "address",
            "strip",
            "pri_prefix",
            "attrs",
            "probe_mode",
            "state",
            "description",
        ],
        optional: &[],
        version: 6,
        create: "CREATE TABLE IF NOT EXISTS dr_gateways (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    gwid CHAR(64) NOT NULL,
    type INTEGER DEFAULT 0 NOT NULL,
    address CHAR(128) NOT NULL,
    strip INTEGER DEFAULT 0 NOT NULL,
    pri_prefix CHAR(16) DEFAULT NULL,
    attrs CHAR(255) DEFAULT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    socket CHAR(128) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL,
    CONSTRAINT dr_gw_idx UNIQUE (gwid)
)",
    },
    Table {
        name: "dr_carriers",
        needs: &[
            "id",
            "carrierid",
            "gwlist",
            "flags",
            "sort_alg",
            "state",
            "attrs",
            "description",
        ],
        optional: &[],
        version: 3,
        create: "CREATE TABLE IF NOT EXISTS dr_carriers (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    carrierid CHAR(64) NOT NULL,
    gwlist CHAR(255) NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL,
    sort_alg CHAR(1) DEFAULT 'N' NOT NULL,
    state INTEGER DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL,
    CONSTRAINT dr_carrier_idx UNIQUE (carrierid)
)",
    },
    Table {
        name: "dr_rules",
        needs: &[
            "ruleid",
            "groupid",
            "prefix",
            "timerec",
            "priority",
            "gwlist",
            "sort_alg",
            "attrs",
            "description",
        ],
        optional: &[],
        version: 4,
        create: "CREATE TABLE IF NOT EXISTS dr_rules (
    ruleid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    groupid CHAR(255) NOT NULL,
    prefix CHAR(64) NOT NULL,
    timerec CHAR(255) DEFAULT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    routeid CHAR(255) DEFAULT NULL,
    gwlist CHAR(255) NOT NULL,
    sort_alg CHAR(1) DEFAULT 'N' NOT NULL,
    sort_profile INTEGER DEFAULT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL
)",
    },
    Table {
        name: "dbaliases",
        needs: &["id", "alias_username", "alias_domain", "username", "domain"],
        optional: &[],
        version: 2,
        create: "CREATE TABLE IF NOT EXISTS dbaliases (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    alias_username CHAR(64) DEFAULT '' NOT NULL,
    alias_domain CHAR(64) DEFAULT '' NOT NULL,
    username CHAR(64) DEFAULT '' NOT NULL,
    domain CHAR(64) DEFAULT '' NOT NULL,
    CONSTRAINT alias_idx UNIQUE (alias_username, alias_domain)
)",
    },
    Table {
        name: "dr_groups",
        needs: &["id", "username", "domain", "groupid", "description"],
        optional: &[],
        version: 2,
        create: "CREATE TABLE IF NOT EXISTS dr_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    username CHAR(64) NOT NULL,
    domain CHAR(128) DEFAULT '' NOT NULL,
    groupid INTEGER DEFAULT 0 NOT NULL,
    description CHAR(128) DEFAULT NULL,
    CONSTRAINT dr_groups_idx UNIQUE (username, domain)
)",
    },
    Table {
        name: "switchboard_nodes",
        needs: &["id", "name", "started"],
        optional: &[],
        version: 1,
        create: "CREATE TABLE IF NOT EXISTS switchboard_nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    name CHAR(64) DEFAULT '' NOT NULL,
    started INTEGER DEFAULT 0 NOT NULL
)",
    },
];

/// Every column of `name` switchboard reads: what it needs, then what it uses where present.
pub fn columns(name: &str) -> Vec<&'static str> {
    table(name)
        .map(|t| t.needs.iter().chain(t.optional).copied().collect())
        .unwrap_or_default()
}

/// The table named `name`.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// A `CREATE TABLE` of [`TABLES`] for `d`.
pub fn render(create: &str, d: Dialect) -> String {
    let rules: &[(&str, &str)] = match d {
        Dialect::Sqlite => &[],
        Dialect::Postgres => &[
            (
                "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL",
                "SERIAL PRIMARY KEY NOT NULL",
            ),
            (
                "INTEGER PRIMARY KEY NOT NULL",
                "BIGINT PRIMARY KEY NOT NULL",
            ),
            (
                "last_modified INTEGER DEFAULT 0 NOT NULL",
                "last_modified TIMESTAMP WITHOUT TIME ZONE DEFAULT '1900-01-01 00:00:01' NOT NULL",
            ),
            ("DATETIME", "TIMESTAMP WITHOUT TIME ZONE"),
            ("FLOAT(10,2)", "REAL"),
            ("TEXT(512)", "TEXT"),
            ("CHAR(", "VARCHAR("),
        ],
        Dialect::Mysql => &[
            (
                "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL",
                "INT UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL",
            ),
            (
                "INTEGER PRIMARY KEY NOT NULL",
                "BIGINT UNSIGNED PRIMARY KEY NOT NULL",
            ),
            (
                "last_modified INTEGER DEFAULT 0 NOT NULL",
                "last_modified DATETIME DEFAULT '1900-01-01 00:00:01' NOT NULL",
            ),
            ("INTEGER", "INT"),
            // VARCHAR: a dialog row of CHAR(255)s in utf8mb4 passes InnoDB's row size limit
            ("CHAR(", "VARCHAR("),
        ],
    };
    let mut s = create.to_string();
    for (from, to) in rules {
        s = s.replace(from, to);
    }
    // "VARCHAR(" rendered from "CHAR(" inside an existing "VARCHAR(": none in the templates
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_renders_for_every_engine_with_its_needed_columns() {
        for t in &TABLES {
            for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
                let sql = render(t.create, d);
                assert!(
                    sql.starts_with(&format!("CREATE TABLE IF NOT EXISTS {} (", t.name)),
                    "{sql}"
                );
                for c in t.needs.iter().chain(t.optional) {
                    assert!(
                        sql.lines()
                            .any(|l| l.trim_start().starts_with(&format!("{c} "))),
                        "{} lacks {c} on {d:?}",
                        t.name
                    );
                }
                if d != Dialect::Sqlite {
                    assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
                    assert!(!sql.contains("VARVARCHAR"), "{sql}");
                }
            }
        }
        let pg = render(table("location").unwrap().create, Dialect::Postgres);
        assert!(
            pg.contains("last_modified TIMESTAMP WITHOUT TIME ZONE"),
            "{pg}"
        );
        assert!(pg.contains("contact_id BIGINT PRIMARY KEY"), "{pg}");
        let my = render(table("acc").unwrap().create, Dialect::Mysql);
        assert!(
            my.contains("id INT UNSIGNED AUTO_INCREMENT PRIMARY KEY"),
            "{my}"
        );
        assert!(my.contains("time DATETIME NOT NULL"), "{my}");
    }
}

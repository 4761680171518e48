//! `switchboard`: SIP edge proxy, registrar and load balancer for FreeSWITCH clusters.

mod balancer_config;
mod cli;
mod cluster;
mod cluster_config;
mod config;
mod dispatch_config;
mod dns_config;
mod esl;
mod media_config;
mod numbers_config;
mod registrar_config;
mod security_config;
mod tls_config;
mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

/// mimalloc: faster small allocations than glibc's malloc on the hot path, and it gives freed
/// pages back to the kernel by itself (glibc keeps bursts of freed buffers in per-thread
/// arenas, so RSS showed the peak of short-lived buffers instead of what is held).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// From the mimalloc library the `mimalloc` crate links (its extended API).
extern "C" {
    fn mi_collect(force: bool);
}

/// Lets mimalloc take back, for the calling thread, the blocks other threads freed: a
/// transaction is allocated by the thread that received its request and freed by the timer
/// thread, and mimalloc only collects such frees when the owning thread allocates again. An
/// idle receive thread would otherwise keep the pages of a whole burst: 10,000 calls left
/// 45 MB of RSS with 1.3 MB live, and 10,000 held dialogs showed 6.8 KB of RSS each for
/// under 1 KB of heap. Called by network threads when idle and by tokio workers when they
/// park, each at most once a second.
fn collect_freed() {
    // SAFETY: mi_collect takes no pointers; it only walks the calling thread's heap.
    unsafe { mi_collect(false) }
}

/// Turns transparent huge pages off for the process. mimalloc asks for them on its arena
/// (`MADV_HUGEPAGE`), and then every 2 MB region the proxy touched stays resident whole: with
/// 10,000 dialogs held, RSS was 52 MB for 11 MB of live heap (3.1 KB per dialog); without
/// huge pages 26 MB (1.7 KB). The heap is many small objects: huge pages buy it nothing.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integers only and affects this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Rate-limits [`collect_freed`] per thread (tokio parks a worker many times a second).
fn collect_freed_on_park() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    if LAST.with(|l| l.get().is_none_or(|t| now.duration_since(t).as_secs() >= 1)) {
        LAST.with(|l| l.set(Some(now)));
        collect_freed();
    }
}
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "SIP edge proxy and load balancer for FreeSWITCH clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the embedded default configuration when no --config is given).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and explain every error.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Inspect and change the dispatcher of a running switchboard (JSON-RPC).
    Dispatcher {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::DispatcherCmd,
    },
    /// Manage the subscribers (digest credentials) of a running switchboard.
    Subscriber {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::SubscriberCmd,
    },
    /// Inspect and change the resource balancer of a running switchboard.
    Lb {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::LbCmd,
    },
    /// Carrier routing of a running switchboard: gateways, their state, a number's route.
    Dr {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::DrCmd,
    },
    /// Dialplan translation of a running switchboard.
    Dp {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::DpCmd,
    },
    /// The ban list of a running switchboard (flood, scanners, password guessing).
    Ban {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::BanCmd,
    },
    /// List or export the CDRs (the acc and missed_calls tables of [database]).
    Cdr {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: cli::CdrCmd,
    },
    /// The database of [database]: `check` says which tables and columns exist, which are
    /// missing and at what version (exit 0 only when every table is usable); `init` creates
    /// the missing tables; `migrate` also adds the columns older schemas lack.
    Db {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: cli::DbCmd,
    },
    /// Inspect and change the location table (registered contacts) of a running switchboard.
    Ul {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::UlCmd,
    },
    /// The media relay (rtpengine instances) of a running switchboard.
    Rtpengine {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::RtpengineCmd,
    },
    /// The calls (dialogs) of a running switchboard: list them, end one.
    Dlg {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        cmd: cli::DlgCmd,
    },
    /// Any management method by its OpenSIPS name, with name=value parameters (values that
    /// read as JSON are sent as JSON): `switchboard mi ds_set_state state=i group=1
    /// address=sip:10.0.0.5:5060`. Prints the result as JSON.
    Mi {
        #[command(flatten)]
        remote: cli::Remote,
        method: String,
        params: Vec<String>,
    },
}

pub(crate) fn read_config(path: &Option<PathBuf>) -> anyhow::Result<(String, String)> {
    match path {
        Some(p) => Ok((
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        )),
        None => Ok((
            config::EMBEDDED_DEFAULT.to_string(),
            "embedded default".into(),
        )),
    }
}

/// Reads and validates the configuration (`path`, or the embedded default), with relative
/// paths read against the file's folder.
pub(crate) fn load_config(
    path: &Option<PathBuf>,
    salt: u64,
) -> anyhow::Result<(Result<config::Config, Vec<config::ConfigError>>, String)> {
    let (text, name) = read_config(path)?;
    let mut r = config::load(&text, salt);
    if let (Ok(c), Some(p)) = (&mut r, path) {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        c.rebase(&dir);
    }
    Ok((r, name))
}

/// 128 bits from the OS's random source (std seeds `RandomState` from it), for keys the
/// core must not draw itself.
fn random_key() -> (u64, u64) {
    use std::hash::BuildHasher;
    let (a, b) = (std::hash::RandomState::new(), std::hash::RandomState::new());
    (a.hash_one(0x5eed_u64), b.hash_one(0xface_u64))
}

fn salt() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

/// Raises the open-file limit to its hard maximum: every TCP connection is a descriptor, and
/// the usual soft limit of 1024 would refuse connections long before `tcp_max_connections`.
fn raise_fd_limit() {
    #[cfg(target_os = "linux")]
    // SAFETY: getrlimit/setrlimit read and write a plain struct owned here.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() -> std::process::ExitCode {
    no_huge_pages();
    raise_fd_limit();
    net::supervise::install_panic_hook();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config } => run(&config),
        Cmd::Dispatcher { remote, cmd } => {
            remote.connect().and_then(|mi| cli::dispatcher(&mi, cmd))
        }
        Cmd::Subscriber { remote, cmd } => {
            remote.connect().and_then(|mi| cli::subscriber(&mi, cmd))
        }
        Cmd::Ul { remote, cmd } => remote.connect().and_then(|mi| cli::ul(&mi, cmd)),
        Cmd::Cdr { config, cmd } => cdr_cmd(&config, cmd),
        Cmd::Db { config, cmd } => db_cmd(&config, cmd),
        Cmd::Lb { remote, cmd } => remote.connect().and_then(|mi| cli::lb(&mi, cmd)),
        Cmd::Dr { remote, cmd } => remote.connect().and_then(|mi| cli::dr(&mi, cmd)),
        Cmd::Dp { remote, cmd } => remote.connect().and_then(|mi| cli::dp(&mi, cmd)),
        Cmd::Ban { remote, cmd } => remote.connect().and_then(|mi| cli::ban(&mi, cmd)),
        Cmd::Dlg { remote, cmd } => remote.connect().and_then(|mi| cli::dlg(&mi, cmd)),
        Cmd::Rtpengine { remote, cmd } => remote.connect().and_then(|mi| cli::rtpengine(&mi, cmd)),
        Cmd::Mi {
            remote,
            method,
            params,
        } => remote
            .connect()
            .and_then(|mi| cli::mi_call(&mi, &method, &params)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn report(name: &str, errors: &[config::ConfigError]) {
    eprintln!("{name}: {} error(s)", errors.len());
    for e in errors {
        eprintln!("  {e}");
    }
}

fn check(path: &Option<PathBuf>) -> anyhow::Result<std::process::ExitCode> {
    let (loaded, name) = load_config(path, 0)?;
    match loaded {
        Ok(c) if c.uses_database() && c.database_problem().is_some() => {
            let why = c.database_problem().unwrap_or_default();
            eprintln!(
                "{name}: database.url {}: cannot be opened: {why}",
                c.database_url
            );
            Ok(std::process::ExitCode::from(1))
        }
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("{name}: warning: {w}");
            }
            println!("{name}: ok ({} udp, {} stream listeners, {} destinations, default set {}, management on {})", c.udp.len(), c.streams.len(), c.dispatcher.sets.iter().map(|s| s.destinations.len()).sum::<usize>(), c.default_set, c.management);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(errors) => {
            report(&name, &errors);
            Ok(std::process::ExitCode::from(1))
        }
    }
}

/// Re-reads and validates the configuration file for a runtime reload; every refusal in one
/// message (the embedded default, without a file, reads as itself).
fn reload_config(path: &Option<PathBuf>) -> Result<config::Config, String> {
    let (loaded, name) = load_config(path, 0).map_err(|e| e.to_string())?;
    loaded.map_err(|errs| {
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        format!("{name}: {}", all.join("; "))
    })
}

/// Reads the `dispatcher` table into sets; bad rows are logged once and skipped.
fn table_sets(
    h: &tokio::runtime::Handle,
    s: &store::Store,
    configured: &[sip_proxy::dispatcher::SetConfig],
) -> Result<Vec<sip_proxy::dispatcher::SetConfig>, String> {
    let (rows, bad) = h.block_on(s.dispatcher_rows()).map_err(|e| e.to_string())?;
    for b in &bad {
        tracing::warn!(row = ?b.id, reason = %b.reason, "dispatcher row skipped");
    }
    let (sets, problems) = dispatch_config::sets_from_rows(&rows, configured);
    for p in &problems {
        tracing::warn!(problem = %p, "dispatcher row skipped");
    }
    tracing::info!(
        rows = rows.len(),
        skipped = bad.len() + problems.len(),
        "dispatcher table loaded"
    );
    Ok(sets)
}

/// `ds_reload`: re-reads the configuration file (the embedded default stays as it is) and
/// swaps the dispatcher's sets.
fn reload_fn(
    path: Option<PathBuf>,
    d: Arc<sip_proxy::dispatcher::Dispatcher>,
    store: Option<(store::Store, tokio::runtime::Handle)>,
) -> admin::ReloadFn {
    Box::new(move |inherit| {
        let cfg = reload_config(&path)?;
        let sets = match (&store, cfg.dispatcher.from_database) {
            (Some((s, h)), true) => {
                tokio::task::block_in_place(|| table_sets(h, s, &cfg.dispatcher.sets))?
            }
            _ => cfg.dispatcher.sets,
        };
        let n = d.reload(sets, inherit);
        tracing::info!(destinations = n, inherit, "dispatcher reloaded");
        Ok(n)
    })
}

fn run(path: &Option<PathBuf>) -> anyhow::Result<std::process::ExitCode> {
    let (loaded, name) = load_config(path, salt())?;
    let mut cfg = match loaded {
        Ok(c) => c,
        Err(errors) => {
            report(&name, &errors);
            return Ok(std::process::ExitCode::from(1));
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    // colour codes only on a terminal: a log file or journal gets plain text
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    for w in cfg.warnings() {
        tracing::warn!("{name}: {w}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("switchboard-rt")
        .on_thread_park(collect_freed_on_park)
        .build()?;
    if let Some(why) = cfg
        .uses_database()
        .then(|| cfg.database_problem())
        .flatten()
    {
        anyhow::bail!("database.url {}: cannot be opened: {why}", cfg.database_url);
    }
    cfg.proxy.keys = token::sip_keys(&cfg.secret_path()).map_err(|e| anyhow::anyhow!(e))?;
    let mgmt_token = match cfg.management_auth {
        true => Some(token::load_or_create(&cfg.token_path()).map_err(|e| anyhow::anyhow!(e))?),
        false => None,
    };
    // bound first: a management port another process holds stops the start, loudly
    let mgmt_listener = rt.block_on(admin::bind(cfg.management)).with_context(|| {
        format!(
            "cannot bind the management API on {} ([management] listen)",
            cfg.management
        )
    })?;
    let d = &cfg.dispatcher;
    let store = match cfg.uses_database() {
        true => Some(open_store(&rt, &cfg)?),
        false => None,
    };
    // a cluster node claims its id on Redis before anything listens: an unreachable Redis
    // or an id another live process holds stops the start here
    let node = match &cfg.cluster {
        Some(c) => Some(cluster::start(&rt, c, &cfg)?),
        None => None,
    };
    // bindings and dialogs this process makes are numbered in a range of ids the database
    // (or, in a cluster, the node id) gives it: two proxies never write the same row
    let persists = cfg.registrar.as_ref().is_some_and(|r| r.persist)
        || (cfg.dialog.is_some() && cfg.dialog_persist);
    let id_base = match (&store, persists) {
        _ if node.is_some() => {
            (cfg.cluster.as_ref().map_or(0, |c| c.node_id) as u64) << store::ID_COUNTER_BITS
        }
        (Some(s), true) => match rt.block_on(s.claim_id_base(&node_name(), unix_now() as i64)) {
            Ok(b) => b,
            Err(e) => {
                // a database user without the right to write switchboard_nodes: a random
                // range (two processes on one database then collide once in 65,535 starts)
                let n = random_key().0 % (store::ID_NODES as u64 - 1) + 1;
                tracing::warn!(error = %e, range = n, "could not number this process in switchboard_nodes: ids from a random range");
                n << store::ID_COUNTER_BITS
            }
        },
        _ => 0,
    };
    let sets = match (&store, d.from_database) {
        (Some(s), true) => table_sets(rt.handle(), s, &d.sets).map_err(|e| anyhow::anyhow!(e))?,
        _ => d.sets.clone(),
    };
    let dispatcher = Arc::new(sip_proxy::dispatcher::Dispatcher::new(
        sets,
        cfg.default_set,
        d.max_attempts,
        d.probe.clone(),
        cfg.proxy.salt,
    ));
    if let (Some(s), true) = (&store, d.persist_state) {
        let (s, h) = (s.clone(), rt.handle().clone());
        dispatcher.set_transition_hook(Box::new(move |set, uri, state| {
            let (s, uri) = (s.clone(), uri.to_string());
            h.spawn(async move {
                if let Err(e) = s.set_dispatcher_state(set, &uri, state.db_code()).await {
                    tracing::warn!(set, destination = %uri, error = %e, "could not persist the destination state");
                }
            });
        }));
    }
    let store_ctx = store.clone().map(|s| (s, rt.handle().clone()));
    // the dispatcher writes through to its table only when the table is its source
    let ds_store = store_ctx.clone().filter(|_| d.from_database);
    let balancer = match &cfg.balancer {
        Some(b) => {
            let nodes = lb_nodes(b, store.as_ref(), rt.handle()).map_err(|e| anyhow::anyhow!(e))?;
            Some(Arc::new(sip_proxy::balancer::Balancer::new(
                nodes,
                b.route.clone(),
                cfg.proxy.salt,
                dispatcher.health_book().clone(),
            )))
        }
        None => None,
    };
    if let Some(b) = &balancer {
        // live capacities (`pstn=fs://...`) over FreeSWITCH's event socket
        let _guard = rt.enter();
        esl::supervise(b.clone());
    }
    let router: Arc<dyn sip_proxy::Router> = match &balancer {
        Some(b) => Arc::new(sip_proxy::balancer::CallRouter {
            dispatcher: dispatcher.clone(),
            balancer: b.clone(),
        }),
        None => dispatcher.clone(),
    };
    let mut proxy = sip_proxy::Proxy::new(cfg.proxy.clone(), router.clone())
        .with_dns(Arc::new(sip_proxy::dns::Cache::new(cfg.dns.cache.clone())));
    let numbers = match &cfg.numbers {
        Some(ns) => {
            let mut n = sip_proxy::numbers::routing::Numbers::new(
                ns.routes.clone(),
                dispatcher.health_book().clone(),
            );
            n.threshold_down = d.probe.threshold_down;
            n.threshold_up = d.probe.threshold_up;
            let n = Arc::new(n);
            let summary = load_numbers(&n, ns, store.as_ref(), rt.handle())
                .map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!(tables = %summary, "number routing");
            proxy = proxy.with_numbers(n.clone());
            Some(n)
        }
        None => None,
    };
    if let Some(pc) = &cfg.pike {
        proxy = proxy.with_pike(Arc::new(sip_proxy::pike::Pike::new(pc.clone())));
    }
    // the writers and supervised tasks run on the runtime
    let _guard = rt.enter();
    let limit = cfg.write_queue_limit;
    let period = std::time::Duration::from_millis(200);
    let mut loc_writer = None;
    let mut shared_loc_writer = None;
    let mut cluster_reg = None;
    if let Some(n) = &node {
        proxy = proxy.with_peers(n.peers.clone());
    }
    if let (Some(rs), Some((s, h))) = (&cfg.registrar, &store_ctx) {
        let reg = start_registrar(rs, s, h, id_base, node.as_ref())?;
        proxy = proxy.with_registrar(reg.clone());
        if let Some(n) = &node {
            // the location lives in Redis: written behind every 50 ms and published, the
            // other nodes' changes followed
            let (keys, id, at) = (cfg.proxy.keys, n.shared.node(), n.address);
            let job = store::shared::LocationJob {
                reg: reg.clone(),
                shared: n.shared.clone(),
                route: Arc::new(move |flow, t| {
                    format!(
                        "<sip:{}@{at};lr;sbt={}>",
                        sip_proxy::mac::flow_token(&keys, id, flow),
                        t.uri_param().unwrap_or("udp")
                    )
                }),
            };
            let period = std::time::Duration::from_millis(50);
            shared_loc_writer = Some(store::behind::Writer::start(job, period, limit));
            cluster_reg = Some(reg.clone());
        } else if rs.persist {
            let job = store::behind::LocationJob {
                reg,
                store: s.clone(),
            };
            loc_writer = Some(store::behind::Writer::start(job, period, limit));
        }
    }
    let mut dialog_writer = None;
    let mut dialog_writer_shared = None;
    let mut cluster_dialogs = None;
    let mut restored_dialogs = None;
    if let Some(dc) = &cfg.dialog {
        let mut dc = dc.clone();
        dc.hash_key = random_key();
        let dl = Arc::new(sip_proxy::dialog::Dialogs::new(
            dc,
            (Instant::now(), unix_now()),
        ));
        if let Some(n) = &node {
            // a cluster's dialogs are in Redis, whatever `persist` says: any node routes
            // and ends any call; the owner expires it and counts it
            dl.set_id_base(id_base);
            dl.set_clustered(true);
            let f = store::shared::DialogFollower {
                dialogs: dl.clone(),
                router: router.clone(),
            };
            let r = router.clone();
            let (held, skipped) = rt
                .block_on(store::shared::load_dialogs_into(&n.shared, &f, &|d| {
                    r.restore_call(d.call_id(), d.node.as_deref(), d.caller.target.addr)
                }))
                .context("cluster.redis: reading the dialogs")?;
            tracing::info!(held, skipped, "dialogs read from redis");
            dl.set_persistence(true);
            let job = store::shared::DialogJob {
                dialogs: dl.clone(),
                shared: n.shared.clone(),
            };
            dialog_writer_shared = Some(store::behind::Writer::start(job, period, limit));
            cluster_dialogs = Some(f);
        } else if let Some((s, h)) = store_ctx.as_ref().filter(|_| cfg.dialog_persist) {
            start_dialogs(&dl, &router, s, h, id_base)?;
            let job = store::behind::DialogJob {
                dialogs: dl.clone(),
                store: s.clone(),
            };
            dialog_writer = Some(store::behind::Writer::start(job, period, limit));
        }
        proxy = proxy.with_dialogs(dl.clone());
        restored_dialogs = Some(dl);
    }
    // the media relay: its client's reader and pinger run under the supervisor
    let media_client = match &cfg.media {
        Some(m) => {
            let list =
                rtp_instances(m, store.as_ref(), rt.handle()).map_err(|e| anyhow::anyhow!(e))?;
            let c = rtpengine::Client::new(&list, m.client.clone(), random_key().0)
                .map_err(|e| anyhow::anyhow!("rtpengine client: {e}"))?;
            let c2 = c.clone();
            net::supervise::spawn("rtpengine-replies", move || c2.clone().read_replies());
            let c4 = c.clone();
            net::supervise::spawn("rtpengine-timers", move || c4.clone().run_timers());
            let c3 = c.clone();
            net::supervise::spawn("rtpengine-pings", move || {
                let c = c3.clone();
                async move {
                    loop {
                        c.ping_due().await;
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            });
            proxy = proxy.with_media(m.media.clone());
            tracing::info!(instances = list.len(), relay = ?m.media.relay, "media relay (rtpengine)");
            Some(c)
        }
        None => None,
    };
    if let Some(dl) = &restored_dialogs {
        // a call restored after a restart still deletes its media at its end
        let list = dl.list();
        proxy.media_restored(list.iter().map(|d| d.call_id()));
    }
    let mut cdr_writer = None;
    if let (true, Some((s, _))) = (cfg.accounting, &store_ctx) {
        let c = Arc::new(sip_proxy::cdr::Cdrs::default());
        proxy = proxy.with_cdrs(c.clone());
        let job = store::behind::CdrJob {
            cdrs: c,
            store: s.clone(),
        };
        cdr_writer = Some(store::behind::Writer::start(
            job,
            std::time::Duration::from_millis(500),
            limit,
        ));
    }
    if let Some(n) = &node {
        n.run(cluster_reg.clone(), cluster_dialogs.clone());
        let (sh, f) = (
            n.shared.clone(),
            store::shared::Followers {
                location: cluster_reg,
                dialogs: cluster_dialogs,
            },
        );
        net::supervise::spawn("cluster-follow", move || {
            store::shared::follow(sh.clone(), f.clone())
        });
    }
    let queues: Vec<store::behind::Meter> = [
        loc_writer.as_ref().map(store::behind::Writer::meter),
        shared_loc_writer.as_ref().map(store::behind::Writer::meter),
        dialog_writer.as_ref().map(store::behind::Writer::meter),
        dialog_writer_shared
            .as_ref()
            .map(store::behind::Writer::meter),
        cdr_writer.as_ref().map(store::behind::Writer::meter),
    ]
    .into_iter()
    .flatten()
    .collect();
    let proxy = Arc::new(proxy);
    let net_cfg = net::NetConfig {
        udp: cfg.udp.clone(),
        streams: cfg.streams.clone(),
        udp_workers: cfg.udp_workers,
        idle_timeout: cfg.tcp_idle_timeout,
        max_message_size: cfg.max_message_size,
        limits: cfg.tcp_limits.clone(),
        tls: cfg.tls.clone(),
        ws_origins: cfg.ws_origins.clone(),
        idle_hook: Some(collect_freed),
        dns: net::dns::DnsSettings {
            servers: cfg.dns.servers.clone(),
            timeout: cfg.dns.timeout,
            attempts: cfg.dns.attempts,
            transports: cfg.proxy.listeners.iter().map(|l| l.transport).collect(),
        },
        media: media_client
            .clone()
            .map(|c| net::Media(Arc::new(media_config::NgRunner(c)))),
    };
    let network = net::Net::start(proxy.clone(), net_cfg, rt.handle().clone())?;
    let (n2, n3) = (network.clone(), network.clone());
    let node = node.map(Arc::new);
    let node_m = node.clone();
    let admin_state = Arc::new(admin::AdminState {
        proxy: proxy.clone(),
        token: mgmt_token,
        started: Instant::now(),
        gauges: Box::new(move || {
            vec![(
                "tcp_connections",
                "open TCP connections",
                n2.connections() as u64,
            )]
        }),
        extra_metrics: Box::new(move |out| {
            metrics_text(&queues, out);
            stream_metrics(&n3, out);
            if let Some(n) = &node_m {
                cluster::metrics(n, out);
            }
        }),
        dispatcher: Some(dispatcher.clone()),
        reload: Some(reload_fn(
            path.clone(),
            dispatcher.clone(),
            ds_store.clone(),
        )),
        store_add: ds_store.clone().map(|(s, h)| -> admin::StoreAddFn {
            Box::new(move |set, d| {
                tokio::task::block_in_place(|| {
                    h.block_on(s.insert_dispatcher(
                        set,
                        &d.uri,
                        d.state.db_code(),
                        &d.weight.to_string(),
                        d.priority as i64,
                        &d.attrs,
                        &d.description,
                    ))
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
            })
        }),
        store_remove: ds_store.clone().map(|(s, h)| -> admin::StoreRemoveFn {
            Box::new(move |set, uri| {
                tokio::task::block_in_place(|| h.block_on(s.delete_dispatcher(set, uri)))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }),
        numbers: numbers.clone(),
        tls_reload: cfg.tls.is_some().then(|| -> admin::TlsReloadFn {
            let n = network.clone();
            Box::new(move || {
                n.tls_reload()?;
                tracing::info!("tls certificate reloaded (tls_reload)");
                Ok(())
            })
        }),
        numbers_reload: numbers.clone().map(|n| -> admin::NumbersReloadFn {
            let (path, st) = (path.clone(), store_ctx.clone());
            Box::new(move || {
                let cfg = reload_config(&path)?;
                let ns = cfg
                    .numbers
                    .ok_or("the configuration has no [numbers] section any more")?;
                tokio::task::block_in_place(|| match &st {
                    Some((s, h)) => load_numbers(&n, &ns, Some(s), h),
                    None => load_numbers(&n, &ns, None, &tokio::runtime::Handle::current()),
                })
            })
        }),
        rtpengine: media_client.clone(),
        rtpengine_reload: media_client.clone().map(|c| -> admin::LbReloadFn {
            let (path, st) = (path.clone(), store_ctx.clone());
            Box::new(move || {
                let cfg = reload_config(&path)?;
                let m = cfg
                    .media
                    .ok_or("the configuration has no [rtpengine] section any more")?;
                let list = tokio::task::block_in_place(|| match &st {
                    Some((s, h)) => rtp_instances(&m, Some(s), h),
                    None => rtp_instances(&m, None, &tokio::runtime::Handle::current()),
                })?;
                let n = c.reload(&list).map_err(|e| e.to_string())?;
                tracing::info!(instances = n, "rtpengine instances reloaded");
                Ok(n)
            })
        }),
        balancer: balancer.clone(),
        lb_reload: balancer.clone().map(|b| -> admin::LbReloadFn {
            let (path, st) = (path.clone(), store_ctx.clone());
            Box::new(move || {
                let cfg = reload_config(&path)?;
                let settings = cfg
                    .balancer
                    .ok_or("the configuration has no [balancer] section any more")?;
                let nodes = tokio::task::block_in_place(|| match &st {
                    Some((s, h)) => lb_nodes(&settings, Some(s), h),
                    None => lb_nodes(&settings, None, &tokio::runtime::Handle::current()),
                })?;
                Ok(b.reload(nodes))
            })
        }),
        subscribers: store_ctx
            .clone()
            .filter(|_| cfg.registrar.is_some())
            .map(|(s, h)| -> Box<dyn admin::SubscriberStore> { Box::new(DbSubscribers { s, h }) }),
        store_ha1: cfg.registrar.as_ref().is_some_and(|r| r.store_ha1),
        parse_destination: Some(Box::new(|uri, weight, priority, attrs, description| {
            dispatch_config::dest_from_parts(
                "destination",
                uri,
                weight,
                priority,
                attrs,
                description,
                "active",
            )
            .map_err(|e| e.to_string())
        })),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mgmt = cfg.management;
    let mut rx = stop_rx.clone();
    let admin_task = rt.spawn(async move {
        if let Err(e) = admin::serve(mgmt_listener, admin_state, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
        {
            tracing::error!(error = %e, address = %mgmt, "management API failed");
        }
    });
    tracing::info!(config = %name, udp = ?cfg.udp, streams = ?cfg.streams, management = %cfg.management, sets = cfg.dispatcher.sets.len(), "switchboard started");
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        // SIGHUP reads the TLS certificate again (a renewed certificate without a restart)
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
                _ = hup.recv() => match network.tls_reload() {
                    Ok(()) => tracing::info!("SIGHUP: tls certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: tls certificate not reloaded; the running one stays"),
                },
            }
        }
    });
    let _ = stop_tx.send(true);
    network.shutdown();
    let _ = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(2), admin_task).await
    });
    // what the core holds goes to the database before exit: calls confirmed in the last
    // second too, then every writer's queue, each within the deadline
    if let Some(d) = proxy.dialogs() {
        d.persist_all();
    }
    let deadline = cfg.shutdown_timeout;
    let left = rt.block_on(async {
        let (a, b, c, d, e) = tokio::join!(
            store::behind::stop(cdr_writer, deadline),
            store::behind::stop(dialog_writer, deadline),
            store::behind::stop(loc_writer, deadline),
            store::behind::stop(shared_loc_writer, deadline),
            store::behind::stop(dialog_writer_shared, deadline),
        );
        // a node stopped cleanly gives its id up at once (a restart need not wait)
        if let Some(n) = &node {
            n.shared.release().await;
        }
        a + b + c + d + e
    });
    tracing::info!(
        active_transactions = proxy.active_contexts(),
        unwritten = left,
        "stopped"
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// One labelled Prometheus series: its HELP and TYPE lines, then a line per (label, value).
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    rows: impl IntoIterator<Item = (&'a str, u64)>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (l, v) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {v}");
    }
}

/// The binary's own series for `/metrics`: panics caught per task (the receive loops and
/// writers are listed at 0 too, so the series exists before the first one), and each
/// write-behind queue's backlog and drops.
fn metrics_text(queues: &[store::behind::Meter], out: &mut String) {
    let mut panics: Vec<(&str, u64)> = [
        "udp-receive",
        "stream-receive",
        "stream-connection",
        "stream-writer",
        "timers",
    ]
    .iter()
    .chain(queues.iter().map(|q| &q.table))
    .map(|t| (*t, 0))
    .collect();
    for (t, n) in net::supervise::counts() {
        match panics.iter_mut().find(|(p, _)| *p == t) {
            Some(p) => p.1 = n,
            None => panics.push((t, n)),
        }
    }
    labelled(
        out,
        "switchboard_task_panics_total",
        "panics caught in background work (logged; the work went on)",
        "counter",
        "task",
        panics,
    );
    if queues.is_empty() {
        return;
    }
    use std::fmt::Write as _;
    let h = &store::behind::HEALTH;
    let _ = writeln!(
        out,
        "# HELP switchboard_database_up 1 while the database takes writes (0 from the first failed write to the next one that works)\n# TYPE switchboard_database_up gauge\nswitchboard_database_up {}",
        u8::from(h.up())
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_database_outages_total times database writes started failing\n# TYPE switchboard_database_outages_total counter\nswitchboard_database_outages_total {}",
        h.outages()
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_database_replayed_total changes written after waiting for the database to come back\n# TYPE switchboard_database_replayed_total counter\nswitchboard_database_replayed_total {}",
        h.replayed()
    );
    labelled(
        out,
        "switchboard_write_queue_pending",
        "changes waiting to be written, per table",
        "gauge",
        "table",
        queues.iter().map(|q| (q.table, (q.pending)() as u64)),
    );
    labelled(
        out,
        "switchboard_write_queue_dropped_total",
        "changes dropped (queue full, or a change that could not be written)",
        "counter",
        "table",
        queues.iter().map(|q| (q.table, (q.dropped)())),
    );
}

/// Open stream connections per transport, and why they were refused or closed, per
/// transport and reason.
fn stream_metrics(n: &net::Net, out: &mut String) {
    use std::fmt::Write as _;
    let open = n.connections_per_transport();
    let name = "switchboard_stream_connections";
    let _ = writeln!(
        out,
        "# HELP {name} open stream connections, per transport\n# TYPE {name} gauge"
    );
    for (t, v) in net::STREAMS.iter().zip(open) {
        let _ = writeln!(
            out,
            "{name}{{transport=\"{}\"}} {v}",
            t.via_name().to_ascii_lowercase()
        );
    }
    let name = "switchboard_stream_closed_total";
    let _ = writeln!(out, "# HELP {name} stream connections refused or closed by a limit or a failed handshake, per transport and reason\n# TYPE {name} counter");
    for (t, c) in net::STREAMS.iter().zip(&n.streams) {
        for (r, v) in c.rows() {
            let _ = writeln!(
                out,
                "{name}{{transport=\"{}\",reason=\"{r}\"}} {v}",
                t.via_name().to_ascii_lowercase()
            );
        }
    }
}

/// The subscriber table, for the management API.
struct DbSubscribers {
    s: store::Store,
    h: tokio::runtime::Handle,
}

impl admin::SubscriberStore for DbSubscribers {
    fn upsert(
        &self,
        user: &str,
        domain: &str,
        secret: admin::StoredSecret<'_>,
    ) -> Result<(), String> {
        let mut row = store::SubscriberRow {
            username: user.into(),
            domain: domain.into(),
            ..Default::default()
        };
        match secret {
            admin::StoredSecret::Plain(p) => row.password = p.into(),
            admin::StoredSecret::Ha1 { md5, sha256 } => {
                row.ha1 = md5.into();
                row.ha1_sha256 = sha256.into();
            }
        }
        tokio::task::block_in_place(|| self.h.block_on(self.s.upsert_subscriber(&row)))
            .map_err(|e| e.to_string())
    }

    fn remove(&self, user: &str, domain: &str) -> Result<bool, String> {
        tokio::task::block_in_place(|| self.h.block_on(self.s.delete_subscriber(user, domain)))
            .map(|n| n > 0)
            .map_err(|e| e.to_string())
    }

    fn load(&self) -> Result<admin::Loaded, String> {
        tokio::task::block_in_place(|| load_subscribers(&self.h, &self.s))
    }
}

use sip_proxy::registrar::Registrar;

/// Every subscriber row as credentials; bad rows come back as reasons.
fn load_subscribers(h: &tokio::runtime::Handle, s: &store::Store) -> Result<admin::Loaded, String> {
    let (rows, bad) = h.block_on(s.subscriber_rows()).map_err(|e| e.to_string())?;
    let mut problems: Vec<String> = bad
        .iter()
        .map(|b| format!("subscriber row {:?}: {}", b.id, b.reason))
        .collect();
    let mut all = Vec::new();
    for r in &rows {
        match registrar_config::credential(r) {
            Ok(c) => all.push((r.username.clone(), r.domain.to_ascii_lowercase(), c)),
            Err(why) => problems.push(format!("subscriber {}@{}: {why}", r.username, r.domain)),
        }
    }
    Ok((all, problems))
}

use store::unix_now;

/// Connects to the configured database (creating missing tables); the message names the
/// server without its password.
fn open_store(rt: &tokio::runtime::Runtime, cfg: &config::Config) -> anyhow::Result<store::Store> {
    let s = rt
        .block_on(store::Store::open_with(
            &cfg.database_url,
            &cfg.database_options,
        ))
        .with_context(|| format!("database.url {}", store::redact(&cfg.database_url)))?;
    tracing::info!(
        database = %store::redact(&cfg.database_url),
        engine = s.dialect().name(),
        "database open"
    );
    Ok(s)
}

/// This process, as its row of `switchboard_nodes` names it: host and PID.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// Builds the registrar: credentials from the subscriber table, and bindings restored from
/// the location table when they persist (`store::behind::LocationJob` writes them behind).
fn start_registrar(
    rs: &registrar_config::RegistrarSettings,
    s: &store::Store,
    h: &tokio::runtime::Handle,
    id_base: u64,
    node: Option<&cluster::Node>,
) -> anyhow::Result<Arc<Registrar>> {
    let now = Instant::now();
    let reg = Arc::new(Registrar::new(rs.core.clone(), (now, unix_now())));
    reg.set_id_base(id_base);
    let (creds, problems) = load_subscribers(h, s).map_err(|e| anyhow::anyhow!(e))?;
    for p in &problems {
        tracing::warn!(problem = %p, "subscriber skipped");
    }
    tracing::info!(
        subscribers = creds.len(),
        skipped = problems.len(),
        "subscribers loaded"
    );
    reg.load_credentials(creds);
    if let Some(n) = node {
        // a cluster's location is in Redis, whatever `persist` says
        reg.set_node(n.shared.node());
        let (held, skipped) = h
            .block_on(store::shared::load_into(&n.shared, &reg))
            .context("cluster.redis: reading the location")?;
        tracing::info!(held, skipped, "location read from redis");
        return Ok(reg);
    }
    if !rs.persist {
        reg.set_persistence(false);
        return Ok(reg);
    }
    let (rows, bad) = h.block_on(s.location_rows())?;
    let mut bindings = Vec::new();
    for r in &rows {
        match store::location_rows::binding(r, now) {
            Ok(b) => bindings.push(b),
            Err(why) => {
                tracing::warn!(contact_id = r.contact_id, reason = %why, "location row skipped")
            }
        }
    }
    for b in &bad {
        tracing::warn!(row = ?b.id, reason = %b.reason, "location row skipped");
    }
    let restored = reg.restore(now, bindings);
    tracing::info!(rows = rows.len(), restored, "location restored");
    Ok(reg)
}

/// Restores the dialogs of the `dialog` table (and their balancer counts); the expired ones
/// are deleted.
fn start_dialogs(
    dl: &Arc<sip_proxy::dialog::Dialogs>,
    router: &Arc<dyn sip_proxy::Router>,
    s: &store::Store,
    h: &tokio::runtime::Handle,
    id_base: u64,
) -> anyhow::Result<()> {
    dl.set_id_base(id_base);
    let now = Instant::now();
    let unix = unix_now();
    let (rows, bad) = h.block_on(s.dialog_rows())?;
    for b in &bad {
        tracing::warn!(row = ?b.id, reason = %b.reason, "dialog row skipped");
    }
    let mut restored = Vec::new();
    let mut gone = Vec::new();
    for r in &rows {
        if r.timeout <= unix as i64 {
            gone.push(store::DialogOp::Delete(r.dlg_id));
            continue;
        }
        match store::dialog_rows::dialog(r, now, unix) {
            Ok(d) => restored.push(d),
            Err(why) => tracing::warn!(dlg_id = r.dlg_id, reason = %why, "dialog row skipped"),
        }
    }
    for d in &restored {
        router.restore_call(d.call_id(), d.node.as_deref(), d.caller.target.addr);
    }
    tracing::info!(
        rows = rows.len(),
        restored = restored.len(),
        expired = gone.len(),
        "dialogs restored"
    );
    h.block_on(s.apply_dialogs(&gone))?;
    dl.restore(restored);
    dl.set_persistence(true);
    Ok(())
}

/// `switchboard db check|init|migrate`.
fn db_cmd(path: &Option<PathBuf>, cmd: cli::DbCmd) -> anyhow::Result<std::process::ExitCode> {
    let (loaded, name) = load_config(path, 0)?;
    let cfg = match loaded {
        Ok(c) => c,
        Err(errors) => {
            report(&name, &errors);
            return Ok(std::process::ExitCode::from(1));
        }
    };
    let url = store::redact(&cfg.database_url);
    if let Some(why) = cfg.database_problem() {
        eprintln!("{name}: database.url {url}: cannot be opened: {why}");
        return Ok(std::process::ExitCode::from(1));
    }
    if matches!(cmd, cli::DbCmd::Check { .. }) {
        if let Some(p) = cfg.missing_database() {
            eprintln!(
                "{name}: no database at {p} (switchboard db init creates it); nothing created"
            );
            return Ok(std::process::ExitCode::from(1));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = match rt.block_on(store::Store::connect(
        &cfg.database_url,
        &cfg.database_options,
    )) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return Ok(std::process::ExitCode::from(1));
        }
    };
    let json = match &cmd {
        cli::DbCmd::Check { json } => *json,
        cli::DbCmd::Init => {
            let failed = rt.block_on(s.create_missing())?;
            for (t, e) in &failed {
                eprintln!("{url}: cannot create table {t}: {e}");
            }
            println!("{url}: tables created where missing");
            false
        }
        cli::DbCmd::Migrate => {
            let added = rt.block_on(s.migrate())?;
            if added.is_empty() {
                println!("{url}: every table has every column");
            } else {
                println!("{url}: added {}", added.join(", "));
            }
            false
        }
    };
    let report = rt.block_on(s.check())?;
    let ok = report.iter().all(store::TableReport::usable);
    cli::print_db_report(s.dialect().name(), &url, &report, json);
    Ok(match ok {
        true => std::process::ExitCode::SUCCESS,
        false => std::process::ExitCode::from(1),
    })
}

/// `switchboard cdr list|export`: reads the database of the configuration.
fn cdr_cmd(path: &Option<PathBuf>, cmd: cli::CdrCmd) -> anyhow::Result<std::process::ExitCode> {
    let (loaded, name) = load_config(path, 0)?;
    let cfg = match loaded {
        Ok(c) => c,
        Err(errors) => {
            report(&name, &errors);
            return Ok(std::process::ExitCode::from(1));
        }
    };
    if let Some(p) = cfg.missing_database() {
        eprintln!("{name}: no database at {p}: switchboard has not run with this configuration (give its file with --config); nothing created");
        return Ok(std::process::ExitCode::from(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt
        .block_on(store::Store::connect(
            &cfg.database_url,
            &cfg.database_options,
        ))
        .with_context(|| format!("database.url {}", store::redact(&cfg.database_url)))?;
    let rows = match &cmd {
        cli::CdrCmd::List { since, limit, .. } => rt.block_on(s.latest_cdrs(*since, *limit))?,
        cli::CdrCmd::Export { since, limit, .. } => rt.block_on(s.cdrs_since(*since, *limit))?,
    };
    let format = match &cmd {
        cli::CdrCmd::List { json: true, .. } => "json",
        cli::CdrCmd::List { .. } => "table",
        cli::CdrCmd::Export { format, .. } => format.as_str(),
    };
    cli::print_cdrs(&rows, format).map_err(|e| anyhow::anyhow!(e))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The balancer's nodes: from the config, or from the `load_balancer` table (bad rows
/// logged and skipped).
/// Reads the number tables (the configuration's rows, or the OpenSIPS tables) into `n`;
/// every row skipped is logged. Gives a summary of what was loaded.
fn load_numbers(
    n: &sip_proxy::numbers::routing::Numbers,
    ns: &numbers_config::NumbersSettings,
    store: Option<&store::Store>,
    h: &tokio::runtime::Handle,
) -> Result<String, String> {
    let (t, problems) = if ns.from_database {
        let s = store.ok_or("[numbers] source = \"database\" needs [database]")?;
        h.block_on(numbers_config::tables_from_store(s))?
    } else {
        numbers_config::build_tables(
            &ns.aliases,
            &ns.groups,
            &ns.dialplan,
            &ns.gateways,
            &ns.carriers,
            &ns.rules,
        )
    };
    for p in &problems {
        tracing::warn!(problem = %p, "number routing row skipped");
    }
    let summary = format!(
        "{} prefix rules, {} gateways, {} dialplan rules, {} aliases, {} caller groups, {} rows skipped",
        t.drouting.rule_count(),
        t.drouting.gateways().len(),
        t.dialplan.len(),
        t.aliases.len(),
        t.groups.len(),
        problems.len()
    );
    n.reload(t);
    Ok(summary)
}

/// The rtpengine instances: the configuration's, or the `rtpengine` table's rows.
fn rtp_instances(
    m: &media_config::MediaSettings,
    store: Option<&store::Store>,
    h: &tokio::runtime::Handle,
) -> Result<Vec<rtpengine::InstanceConfig>, String> {
    if !m.from_database {
        return Ok(m.instances.clone());
    }
    let s = store.ok_or("the rtpengine table needs [database]")?;
    let (rows, bad) = h.block_on(s.rtpengine_rows()).map_err(|e| e.to_string())?;
    for r in &bad {
        tracing::warn!(row = ?r.id, reason = %r.reason, "rtpengine row skipped");
    }
    let (list, problems) = media_config::instances_from_rows(&rows);
    for p in &problems {
        tracing::warn!(problem = %p, "rtpengine row skipped");
    }
    tracing::info!(
        rows = rows.len(),
        instances = list.len(),
        skipped = bad.len() + problems.len(),
        "rtpengine table loaded"
    );
    if list.is_empty() {
        tracing::warn!("the rtpengine table has no usable instance: relayed calls will get 503");
    }
    Ok(list)
}

fn lb_nodes(
    b: &balancer_config::BalancerSettings,
    store: Option<&store::Store>,
    h: &tokio::runtime::Handle,
) -> Result<Vec<sip_proxy::balancer::LbNodeConfig>, String> {
    if !b.from_database {
        return Ok(b.nodes.clone());
    }
    let s = store.ok_or("the load_balancer table needs [database]")?;
    let (rows, bad) = h
        .block_on(s.load_balancer_rows())
        .map_err(|e| e.to_string())?;
    for r in &bad {
        tracing::warn!(row = ?r.id, reason = %r.reason, "load_balancer row skipped");
    }
    let (nodes, problems) = balancer_config::nodes_from_rows(&rows);
    for p in &problems {
        tracing::warn!(problem = %p, "load_balancer row skipped");
    }
    tracing::info!(
        rows = rows.len(),
        nodes = nodes.len(),
        skipped = bad.len() + problems.len(),
        "load_balancer table loaded"
    );
    Ok(nodes)
}

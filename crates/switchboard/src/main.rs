//! `switchboard`: SIP edge proxy, registrar and load balancer for FreeSWITCH clusters.

mod cli;
mod config;
mod dispatch_config;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
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
        /// The management endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8888/mi", global = true)]
        mi: String,
        #[command(subcommand)]
        cmd: cli::DispatcherCmd,
    },
}

fn read_config(path: &Option<PathBuf>) -> anyhow::Result<(String, String)> {
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

fn salt() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config } => run(&config),
        Cmd::Dispatcher { mi, cmd } => cli::dispatcher(&mi, cmd),
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
    let (text, name) = read_config(path)?;
    match config::load(&text, 0) {
        Ok(c) => {
            println!("{name}: ok ({} udp, {} tcp listeners, {} destinations, default set {}, management on {})", c.udp.len(), c.tcp.len(), c.dispatcher.sets.iter().map(|s| s.destinations.len()).sum::<usize>(), c.default_set, c.management);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(errors) => {
            report(&name, &errors);
            Ok(std::process::ExitCode::from(1))
        }
    }
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
        let (text, name) = read_config(&path).map_err(|e| e.to_string())?;
        let cfg = config::load(&text, 0).map_err(|errs| {
            format!(
                "{name}: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let sets = match &store {
            Some((s, h)) => tokio::task::block_in_place(|| table_sets(h, s, &cfg.dispatcher.sets))?,
            None => cfg.dispatcher.sets,
        };
        let n = d.reload(sets, inherit);
        tracing::info!(config = %name, destinations = n, inherit, "dispatcher reloaded");
        Ok(n)
    })
}

fn run(path: &Option<PathBuf>) -> anyhow::Result<std::process::ExitCode> {
    let (text, name) = read_config(path)?;
    let cfg = match config::load(&text, salt()) {
        Ok(c) => c,
        Err(errors) => {
            report(&name, &errors);
            return Ok(std::process::ExitCode::from(1));
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("switchboard-rt")
        .build()?;
    let d = &cfg.dispatcher;
    let store = match d.from_database {
        true => Some(
            rt.block_on(store::Store::open(&cfg.database_url))
                .with_context(|| format!("opening {}", cfg.database_url))?,
        ),
        false => None,
    };
    let sets = match &store {
        Some(s) => table_sets(rt.handle(), s, &d.sets).map_err(|e| anyhow::anyhow!(e))?,
        None => d.sets.clone(),
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
    let router = dispatcher.clone();
    let proxy = Arc::new(sip_proxy::Proxy::new(cfg.proxy.clone(), router));
    let net_cfg = net::NetConfig {
        udp: cfg.udp.clone(),
        tcp: cfg.tcp.clone(),
        udp_workers: cfg.udp_workers,
        tcp_idle_timeout: cfg.tcp_idle_timeout,
        max_message_size: cfg.max_message_size,
    };
    let _guard = rt.enter();
    let network = net::Net::start(proxy.clone(), net_cfg, rt.handle().clone())?;
    let n2 = network.clone();
    let admin_state = Arc::new(admin::AdminState {
        proxy: proxy.clone(),
        started: Instant::now(),
        gauges: Box::new(move || {
            vec![(
                "tcp_connections",
                "open TCP connections",
                n2.connections() as u64,
            )]
        }),
        dispatcher: Some(dispatcher.clone()),
        reload: Some(reload_fn(
            path.clone(),
            dispatcher.clone(),
            store_ctx.clone(),
        )),
        store_add: store_ctx.clone().map(|(s, h)| -> admin::StoreAddFn {
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
        store_remove: store_ctx.clone().map(|(s, h)| -> admin::StoreRemoveFn {
            Box::new(move |set, uri| {
                tokio::task::block_in_place(|| h.block_on(s.delete_dispatcher(set, uri)))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }),
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
        if let Err(e) = admin::serve(mgmt, admin_state, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
        {
            tracing::error!(error = %e, address = %mgmt, "management API failed");
        }
    });
    tracing::info!(config = %name, udp = ?cfg.udp, tcp = ?cfg.tcp, management = %cfg.management, sets = cfg.dispatcher.sets.len(), "switchboard started");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        }
    });
    let _ = stop_tx.send(true);
    network.shutdown();
    let _ = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(2), admin_task).await
    });
    tracing::info!(active_transactions = proxy.active_contexts(), "stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

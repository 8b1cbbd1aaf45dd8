//! `chronos serve` (the data service: engines, API, hot reload, the retry queue's worker, a
//! graceful drain) and `chronos check-config`.

use std::path::PathBuf;

use chronos::api::{self, AppState, ServiceSettings, auth::Tokens};
use chronos::config::Config;
use chronos::connect::{self, Connections};
use chronos::error::{Error, Result};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Configuration file (YAML or JSON).
    #[arg(long, env = "CHRONOS_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "CHRONOS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Where embedded mode keeps its data.
    #[arg(long, env = "CHRONOS_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Bearer tokens file (overrides the configuration's auth.tokensFile).
    #[arg(long, env = "CHRONOS_TOKENS_FILE")]
    tokens: Option<PathBuf>,
    /// How often the configuration and tokens files, and the secrets they name, are checked for
    /// changes (also on SIGHUP).
    #[arg(long, env = "CHRONOS_RELOAD_INTERVAL_SECS", default_value_t = 10)]
    reload_interval_secs: u64,
}

/// Check a configuration file; with `connect` also reach its backends.
pub async fn check_config(path: PathBuf, connect: bool) -> Result<()> {
    let config = Config::load(&path)?;
    // Resolving the routes finds what no single field shows (two keys in one MongoDB database).
    connect::storages(&config, &PathBuf::from("./data"))?;
    let storage = config.storage(&PathBuf::from("./data")).map_err(Error::Secret)?;
    println!("{}: valid ({})", path.display(), connect::describe(&storage));
    if connect {
        connect::open(
            chronos::engine::DEFAULT_DATABASE,
            &storage,
            config.engine_settings(),
            &Connections::default(),
        )
        .await?;
        println!("backends reachable");
    }
    Ok(())
}

/// Queued writes run at most this many at a time per database.
const QUEUE_CONCURRENCY: usize = 8;

pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let tokens_file = args
        .tokens
        .clone()
        .or_else(|| config.auth.as_ref().map(|a| a.tokens_file.clone()));
    let tokens = tokens_file
        .as_deref()
        .map(Tokens::load)
        .transpose()
        .map_err(Error::Tokens)?;
    let max_body_bytes = config.max_payload_bytes() + 64 * 1024;
    let conns = std::sync::Arc::new(Connections::default());
    let databases = connect::open_all(&config, &args.data_dir, &conns).await?;
    let reloader = match &args.config {
        Some(path) => chronos::reload::Reloader::new(path, &args.data_dir, conns.clone(), &config, &databases)?,
        None => chronos::reload::Reloader::without_config(),
    };
    let reloader = match (&tokens_file, &tokens) {
        (Some(path), Some(loaded)) => reloader.with_tokens(path, loaded),
        _ => reloader,
    };
    let keys: Vec<String> = databases.keys().cloned().collect();
    let state = AppState::new(databases, tokens);
    let interval = std::time::Duration::from_secs(args.reload_interval_secs.max(1));
    tokio::spawn(reloader.run(state.clone(), interval));
    let app = api::router(state.clone(), &ServiceSettings::new(max_body_bytes));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr()?;
    eprintln!("Chronos {} serving http://{addr}", env!("CARGO_PKG_VERSION"));
    match config.routed() {
        true => eprintln!("  data: {} routed databases: {}", keys.len(), keys.join(", ")),
        false => eprintln!(
            "  data: {} (database key `default`)",
            connect::describe(&config.storage(&args.data_dir).map_err(Error::Secret)?)
        ),
    }
    eprintln!(
        "  auth: {}",
        match &tokens_file {
            Some(f) => format!("bearer tokens from {}", f.display()),
            None => "OFF (no tokens file) - anyone who can reach this port can read and write".to_owned(),
        }
    );
    eprintln!(
        "  try:  curl -s -X POST http://{addr}/v1/default/notes/items -H 'content-type: application/json' -d '{{\"title\":\"hello\"}}'"
    );
    eprintln!("  API:  http://{addr}/openapi.json");
    // Erasures a killed process left started are finished in the background (each step is
    // idempotent); an item not reached yet reads as before until then.
    for (key, engine) in state.databases() {
        tokio::spawn(async move {
            match engine.resume_erasures().await {
                Ok(done) if !done.is_empty() => {
                    tracing::info!(database = %key, erasures = done.len(), "finished erasures left started")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(database = %key, error = %e, "could not finish an erasure left started; `chronos erase --resume` retries")
                }
            }
        });
    }
    // The retry queue's worker: runs queued writes of every database served, until shutdown.
    let (stop_queue, queue_stopped) = tokio::sync::oneshot::channel::<()>();
    let queue_worker = tokio::spawn({
        let state = state.clone();
        async move {
            let stopped = async {
                let _ = queue_stopped.await;
            };
            chronos::engine::versioning::submit::work(
                move || state.databases(),
                QUEUE_CONCURRENCY,
                std::time::Duration::from_secs(1),
                stopped,
            )
            .await;
        }
    });
    let requested = state.shutdown_requested();
    let stopping = state.clone();
    let stop = async move {
        tokio::select! {
            () = chronos::shutdown_signal() => tracing::info!("shutdown requested; draining in-flight requests"),
            () = requested => tracing::info!("shutdown requested through the admin API; draining"),
        }
        // Whichever asked, everything that waits on the state's signal ends now: change-feed
        // streams never finish by themselves, and the drain would wait for them forever (past
        // the orchestrator's grace period, so the ledger's last segments would be lost).
        stopping.request_shutdown();
    };
    api::serve(listener, app, stop).await.map_err(Error::Serve)?;
    let _ = stop_queue.send(());
    let _ = queue_worker.await;
    // The versions committed in the last second are not in the ledger yet: write them now, so a
    // rebuild from the buckets finds every version this process committed.
    for (key, engine) in state.databases() {
        if let Err(e) = engine.flush_ledger().await {
            tracing::warn!(db = %key, error = %e, "could not write the ledger's last segments");
        }
    }
    eprintln!("Chronos stopped: in-flight requests drained");
    Ok(())
}

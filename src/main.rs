//! The `chronos` binary: the data service, the operator, and a command-line client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use chronos::api::{self, AppState, ServiceSettings, auth::Tokens};
use chronos::config::Config;
use chronos::connect::{self, Connections};

mod cli;
mod scrub;

#[derive(Parser)]
#[command(
    name = "chronos",
    version,
    about = "Versioned, cost-first persistence for JSON records"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing syntax, e.g. `info` or `chronos=debug`).
    #[arg(long, global = true, env = "CHRONOS_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, global = true, env = "CHRONOS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP/JSON data service. Without --config: embedded storage in --data-dir.
    Serve(ServeArgs),
    /// Check a configuration file; with --connect also reach its backends.
    CheckConfig {
        path: PathBuf,
        #[arg(long)]
        connect: bool,
    },
    /// Run the Kubernetes operator (the controllers of the chronos.dev resources).
    Operator(chronos::operator::OperatorArgs),
    /// Print the operator's CustomResourceDefinitions as YAML.
    Crds,
    /// Report orphaned payloads (payloads without a version); --delete removes them.
    Scrub(scrub::ScrubArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::CheckConfig { path, connect } => check_config(path, connect).await,
            Command::Operator(args) => chronos::operator::run(args).await.map_err(|e| e.to_string()),
            Command::Crds => chronos::operator::crds_yaml()
                .map(|yaml| print!("{yaml}"))
                .map_err(|e| e.to_string()),
            Command::Scrub(args) => scrub::run(args).await,
            Command::Client(cmd) => cmd.run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn check_config(path: PathBuf, connect: bool) -> Result<(), String> {
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    // Resolving the routes finds what no single field shows (two keys in one MongoDB database).
    connect::storages(&config, &PathBuf::from("./data"))?;
    let storage = config.storage(&PathBuf::from("./data"))?;
    println!("{}: valid ({})", path.display(), connect::describe(&storage));
    if connect {
        connect::open(
            chronos::engine::DEFAULT_DATABASE,
            &storage,
            config.engine_settings(),
            &Connections::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        println!("backends reachable");
    }
    Ok(())
}

/// Queued writes run at most this many at a time per database.
const QUEUE_CONCURRENCY: usize = 8;

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let tokens_file = args
        .tokens
        .clone()
        .or_else(|| config.auth.as_ref().map(|a| a.tokens_file.clone()));
    let tokens = tokens_file.as_deref().map(Tokens::load).transpose()?;
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
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("Chronos {} serving http://{addr}", env!("CARGO_PKG_VERSION"));
    match config.routed() {
        true => eprintln!("  data: {} routed databases: {}", keys.len(), keys.join(", ")),
        false => eprintln!(
            "  data: {} (database key `default`)",
            connect::describe(&config.storage(&args.data_dir)?)
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
    // The retry queue's worker: runs queued writes of every database served, until shutdown.
    let (stop_queue, queue_stopped) = tokio::sync::oneshot::channel::<()>();
    let queue_worker = tokio::spawn({
        let state = state.clone();
        async move {
            let stopped = async {
                let _ = queue_stopped.await;
            };
            chronos::engine::retry::work(
                move || state.databases(),
                QUEUE_CONCURRENCY,
                std::time::Duration::from_secs(1),
                stopped,
            )
            .await;
        }
    });
    let requested = state.shutdown_requested();
    let stop = async move {
        tokio::select! {
            () = chronos::shutdown_signal() => tracing::info!("shutdown requested; draining in-flight requests"),
            () = requested => tracing::info!("shutdown requested through the admin API; draining"),
        }
    };
    api::serve(listener, app, stop)
        .await
        .map_err(|e| format!("server error: {e}"))?;
    let _ = stop_queue.send(());
    let _ = queue_worker.await;
    eprintln!("Chronos stopped: in-flight requests drained");
    Ok(())
}

//! Which database a maintenance command (`scrub`, `rebuild`, `verify`, `erase`) works on, and opening its
//! engine straight from the configuration — no server in between, so it works while the service
//! is down (and a rebuild is exactly for when the metadata is gone).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use chronos::config::Config;
use chronos::connect::{self, Connections};
use chronos::engine::{Engine, EngineSettings};
use chronos::error::{Error, Result};

#[derive(Args)]
pub struct DatabaseArgs {
    /// Configuration file (YAML or JSON). Without it: the embedded storage in --data-dir.
    #[arg(long, env = "CHRONOS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where embedded mode keeps its data.
    #[arg(long, env = "CHRONOS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database key (`default` without routing).
    #[arg(long, default_value = "default")]
    pub db: String,
}

impl DatabaseArgs {
    /// The database's engine and its settings.
    pub async fn open(&self) -> Result<(Arc<Engine>, EngineSettings)> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let storages = connect::storages(&config, &self.data_dir)?;
        let (storage, settings) = storages.get(&self.db).ok_or_else(|| {
            let known: Vec<&str> = storages.keys().map(String::as_str).collect();
            Error::Usage(format!("no database `{}` (known: {})", self.db, known.join(", ")))
        })?;
        // Each database's objects are under its own key prefix, so the engine sees only its own
        // objects even in a bucket other databases share.
        let engine = connect::open(&self.db, storage, settings.clone(), &Connections::default())
            .await
            .map_err(|source| Error::Open {
                key: self.db.clone(),
                place: Some(connect::describe(storage)),
                source,
            })?;
        Ok((engine, settings.clone()))
    }
}

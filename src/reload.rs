//! Hot reload of the configuration: the routing table and collection maps change without a
//! restart and without failing a request in flight.
//!
//! The file is polled (a Kubernetes Secret or ConfigMap mounted as a file changes by an atomic
//! symlink swap, which inotify-style watching misses unless done carefully; a digest poll can't)
//! and re-read at once on SIGHUP. A new table is built beside the old one — engines whose
//! storage and settings are unchanged are kept, new or changed ones are opened — and swapped in
//! whole. An invalid file is logged and the old table stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::AppState;
use crate::config::{Config, Storage};
use crate::connect::{self, Connections};
use crate::engine::{Engine, EngineSettings};

struct Opened {
    storage: Storage,
    settings: EngineSettings,
    engine: Arc<Engine>,
}

pub struct Reloader {
    path: PathBuf,
    default_dir: PathBuf,
    conns: Arc<Connections>,
    opened: BTreeMap<String, Opened>,
    digest: Vec<u8>,
}

impl Reloader {
    /// Start from the configuration `databases` were opened with.
    pub fn new(
        path: &Path,
        default_dir: &Path,
        conns: Arc<Connections>,
        config: &Config,
        databases: &BTreeMap<String, Arc<Engine>>,
    ) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let opened = connect::storages(config, default_dir)?
            .into_iter()
            .filter_map(|(key, (storage, settings))| {
                let engine = databases.get(&key)?.clone();
                Some((
                    key,
                    Opened {
                        storage,
                        settings,
                        engine,
                    },
                ))
            })
            .collect();
        Ok(Reloader {
            path: path.to_owned(),
            default_dir: default_dir.to_owned(),
            conns,
            opened,
            digest: Sha256::digest(&text).to_vec(),
        })
    }

    /// Re-read the file; if it changed and is valid, swap in the new table. `Ok(true)` when the
    /// table was replaced.
    pub async fn check(&mut self, state: &AppState) -> Result<bool, String> {
        let text = tokio::fs::read(&self.path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let digest = Sha256::digest(&text).to_vec();
        if digest == self.digest {
            return Ok(false);
        }
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        let mut next = BTreeMap::new();
        for (key, (storage, settings)) in connect::storages(&config, &self.default_dir)? {
            let engine = match self.opened.get(&key) {
                Some(o) if o.storage == storage && o.settings == settings => o.engine.clone(),
                _ => connect::open(&storage, settings.clone(), &self.conns)
                    .await
                    .map_err(|e| format!("database `{key}`: {e}"))?,
            };
            next.insert(
                key,
                Opened {
                    storage,
                    settings,
                    engine,
                },
            );
        }
        state.replace_databases(next.iter().map(|(k, o)| (k.clone(), o.engine.clone())).collect());
        let keys: Vec<&String> = next.keys().collect();
        tracing::info!(?keys, "configuration reloaded");
        self.opened = next;
        self.digest = digest;
        Ok(true)
    }

    /// Check every `interval` and on SIGHUP, until the process ends.
    pub async fn run(mut self, state: AppState, interval: Duration) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            {
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(interval) => {},
                    () = hup_recv => {},
                }
            }
            #[cfg(not(unix))]
            tokio::time::sleep(interval).await;
            if let Err(e) = self.check(&state).await {
                tracing::error!(error = %e, "configuration not reloaded; still serving the previous one");
            }
        }
    }
}

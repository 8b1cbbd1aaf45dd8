//! Hot reload of the configuration and the tokens: the routing table, collection maps, rotated
//! credentials and revoked tokens take effect without a restart and without failing a request in
//! flight.
//!
//! The files are polled (a Kubernetes Secret or ConfigMap mounted as a file changes by an atomic
//! symlink swap, which inotify-style watching misses unless done carefully; a poll can't) and
//! re-read at once on SIGHUP. What is compared is what the files *resolve to*, secrets read
//! through `{file: …}` included, so a rotated password or token is noticed although the file that
//! names it never changed. A new table is built beside the old one — engines whose storage and
//! settings are unchanged are kept, new or changed ones are opened — and swapped in whole. An
//! invalid file is logged and the old table (or the old tokens) stay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::api::AppState;
use crate::api::auth::Tokens;
use crate::config::{Config, Storage};
use crate::connect::{self, Connections};
use crate::engine::{Engine, EngineSettings};
use crate::error::{Error, Result};

pub struct Reloader {
    config: Option<ConfigWatch>,
    tokens: Option<TokensWatch>,
}

struct Opened {
    storage: Storage,
    settings: EngineSettings,
    engine: Arc<Engine>,
}

struct ConfigWatch {
    path: PathBuf,
    default_dir: PathBuf,
    conns: Arc<Connections>,
    opened: BTreeMap<String, Opened>,
}

struct TokensWatch {
    path: PathBuf,
    fingerprint: [u8; 32],
}

impl Reloader {
    /// Start from the configuration `databases` were opened with.
    pub fn new(
        path: &Path,
        default_dir: &Path,
        conns: Arc<Connections>,
        config: &Config,
        databases: &BTreeMap<String, Arc<Engine>>,
    ) -> Result<Self> {
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
            config: Some(ConfigWatch {
                path: path.to_owned(),
                default_dir: default_dir.to_owned(),
                conns,
                opened,
            }),
            tokens: None,
        })
    }

    /// Watch no configuration file (the server runs on defaults): only what `with_tokens` adds.
    pub fn without_config() -> Self {
        Reloader {
            config: None,
            tokens: None,
        }
    }

    /// Also watch the tokens file `loaded` came from.
    pub fn with_tokens(mut self, path: &Path, loaded: &Tokens) -> Self {
        self.tokens = Some(TokensWatch {
            path: path.to_owned(),
            fingerprint: loaded.fingerprint(),
        });
        self
    }

    /// Re-read the files; swap in what changed and is valid. `Ok(true)` when the tokens or the
    /// table were replaced. The tokens go first: a broken configuration must not hold up
    /// revoking a token.
    pub async fn check(&mut self, state: &AppState) -> Result<bool> {
        let tokens = match &mut self.tokens {
            Some(watch) => watch.check(state),
            None => Ok(false),
        };
        let config = match &mut self.config {
            Some(watch) => watch.check(state).await,
            None => Ok(false),
        };
        match (tokens, config) {
            (Ok(a), Ok(b)) => Ok(a || b),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(Error::Both(Box::new(a), Box::new(b))),
        }
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
                tracing::error!(error = %e, "not reloaded; still serving the previous configuration and tokens");
            }
        }
    }
}

impl ConfigWatch {
    async fn check(&mut self, state: &AppState) -> Result<bool> {
        let config = Config::load(&self.path)?;
        // Resolving reads the secrets the file names: a rotated one shows as a changed storage.
        let resolved = connect::storages(&config, &self.default_dir)?;
        let unchanged = resolved.len() == self.opened.len()
            && resolved.iter().all(|(key, (storage, settings))| {
                self.opened
                    .get(key)
                    .is_some_and(|o| o.storage == *storage && o.settings == *settings)
            });
        if unchanged {
            return Ok(false);
        }
        let mut next = BTreeMap::new();
        for (key, (storage, settings)) in resolved {
            let engine = match self.opened.get(&key) {
                Some(o) if o.storage == storage && o.settings == settings => o.engine.clone(),
                _ => connect::open(&key, &storage, settings.clone(), &self.conns)
                    .await
                    .map_err(|source| Error::Open {
                        key: key.clone(),
                        place: None,
                        source,
                    })?,
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
        Ok(true)
    }
}

impl TokensWatch {
    fn check(&mut self, state: &AppState) -> Result<bool> {
        let tokens = Tokens::load(&self.path).map_err(Error::Tokens)?;
        let fingerprint = tokens.fingerprint();
        if fingerprint == self.fingerprint {
            return Ok(false);
        }
        tracing::info!(tokens = tokens.len(), "tokens reloaded");
        state.replace_tokens(tokens);
        self.fingerprint = fingerprint;
        Ok(true)
    }
}

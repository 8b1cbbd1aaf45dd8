//! A failover under concurrent writes, on a replica set of its own: three mongod on loopback
//! ports (the cached binary of `scripts/services.sh`), in a temporary directory, stopped when the
//! test ends. The primary is killed while writers run; afterwards every acknowledged write is
//! readable with its own cv, and no cv was handed out twice (review M2, M3).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chronos::engine::{Attribution, CollectionName, EngineSettings, ItemId, ReadOptions, VersionTarget};
use mongodb::bson::doc;
use serde_json::json;

use crate::support;

/// Three mongod of one replica set; killed when dropped.
struct ReplicaSet {
    nodes: Vec<Option<Child>>,
    ports: Vec<u16>,
    name: String,
    _dir: tempfile::TempDir,
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl ReplicaSet {
    async fn start() -> ReplicaSet {
        let cache =
            std::env::var("CHRONOS_CACHE").unwrap_or_else(|_| format!("{}/.cache/chronos-test", support::env("HOME")));
        let mongod = format!("{cache}/venv/bin/mongod");
        let dir = tempfile::tempdir().expect("temporary directory");
        let name = support::unique("rsf");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut set = ReplicaSet {
            nodes: Vec::new(),
            ports: ports.clone(),
            name: name.clone(),
            _dir: dir,
        };
        for (i, port) in ports.iter().enumerate() {
            let db = set._dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&db).unwrap();
            let child = Command::new(&mongod)
                .args([
                    "--replSet",
                    &name,
                    "--bind_ip",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ])
                .arg("--dbpath")
                .arg(&db)
                .args(["--nounixsocket", "--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "64"])
                .args(["--setParameter", "diagnosticDataCollectionEnabled=false"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{mongod} does not start ({e}): run `scripts/services.sh install`"));
            set.nodes.push(Some(child));
        }
        let first = direct(ports[0]).await;
        let members: Vec<_> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| doc! {"_id": i as i32, "host": format!("127.0.0.1:{p}"), "priority": if i == 0 { 2 } else { 1 }})
            .collect();
        let config = doc! {
            "_id": &name,
            "members": members,
            "settings": {"electionTimeoutMillis": 2000_i32, "heartbeatIntervalMillis": 500_i32},
        };
        // The nodes take a moment to listen.
        let mut tries = 0;
        while let Err(e) = first
            .database("admin")
            .run_command(doc! {"replSetInitiate": &config})
            .await
        {
            tries += 1;
            assert!(tries < 100, "replSetInitiate: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        set
    }

    fn uri(&self) -> String {
        let hosts: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("mongodb://{}/?replicaSet={}", hosts.join(","), self.name)
    }

    /// The port of the current primary, once there is one.
    async fn primary(&self) -> usize {
        let client = mongodb::Client::with_uri_str(self.uri()).await.unwrap();
        for _ in 0..300 {
            if let Ok(hello) = client.database("admin").run_command(doc! {"hello": 1}).await
                && let Ok(primary) = hello.get_str("primary")
                && let Some(i) = self.ports.iter().position(|p| primary.ends_with(&format!(":{p}")))
            {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no primary within 60 s");
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill().unwrap();
            node.wait().unwrap();
        }
    }
}

async fn direct(port: u16) -> mongodb::Client {
    mongodb::Client::with_uri_str(format!("mongodb://127.0.0.1:{port}/?directConnection=true"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_under_concurrent_writes_loses_no_acknowledged_write() {
    let mut set = ReplicaSet::start().await;
    let primary = set.primary().await;
    let h = support::mongo_s3_at(&set.uri(), EngineSettings::default()).await;
    let c: CollectionName = "failover".parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (engine, c, stop) = (h.engine.clone(), c.clone(), stop.clone());
            tokio::spawn(async move {
                let id: ItemId = format!("w{w}").parse().unwrap();
                let who = Attribution::default();
                let mut acknowledged = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let data = json!({"w": w, "n": n}).as_object().unwrap().clone();
                    let outcome = if acknowledged.is_empty() {
                        engine.create(&c, Some(id.clone()), data, &who).await.map(|(_, o)| o)
                    } else {
                        engine.update(&c, &id, data, None, &who).await
                    };
                    // Failures are fine (the primary is gone); only acknowledged writes count.
                    if let Ok(o) = outcome {
                        acknowledged.push((o.ov, o.cv, n));
                    }
                    n += 1;
                }
                (id, acknowledged)
            })
        })
        .collect();
    // Let each writer be acknowledged a few times, then take the primary away.
    let before = count_versions(&h, &c).await;
    while count_versions(&h, &c).await < before + 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set.kill(primary);
    let after_kill = set.primary().await;
    assert_ne!(after_kill, primary, "a new primary was elected");
    // Writes go on with the new primary.
    let resumed = count_versions(&h, &c).await;
    while count_versions(&h, &c).await < resumed + 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);

    let mut ids = Vec::new();
    for writer in writers {
        let (id, acknowledged) = writer.await.unwrap();
        for (ov, cv, n) in acknowledged {
            let v = h
                .engine
                .get_at(&c, &id, VersionTarget::Ov(ov), ReadOptions::default())
                .await
                .unwrap_or_else(|e| {
                    panic!("acknowledged {id} ov {ov} is lost: {e}");
                });
            assert_eq!((v.cv, v.data["n"].clone()), (cv, json!(n)), "{id} ov {ov}");
        }
        ids.push(id);
    }
    // Every version in the index, acknowledged or not: no cv twice in the collection.
    let mut cvs: HashMap<u64, (ItemId, u64)> = HashMap::new();
    for id in &ids {
        let history = h
            .engine
            .history(&c, id, None, 1000, ReadOptions { include_deleted: true })
            .await
            .unwrap();
        for v in history {
            if let Some(other) = cvs.insert(v.cv, (id.clone(), v.ov)) {
                panic!("cv {} was given to {other:?} and to {id} ov {}", v.cv, v.ov);
            }
        }
    }
    assert!(cvs.len() >= 80, "{} versions", cvs.len());
}

async fn count_versions(h: &support::Harness, c: &CollectionName) -> u64 {
    h.meta
        .count_versions(c, 0, &Default::default())
        .await
        .map(|m| m.values().sum())
        .unwrap_or(0)
}

//! A TCP proxy in front of mongod that loses the replies to chosen commands: the command reaches
//! the server and takes effect, then the connection breaks before the client hears back — how
//! a write's outcome becomes unknown to its sender. The test mongod has no `failCommand`
//! (test commands are off), so this is how the tests make that happen for real.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Trap {
    /// A request whose bytes contain one of these loses its reply.
    markers: Mutex<Vec<Vec<u8>>>,
    dropped: AtomicUsize,
}

pub struct ReplyDropper {
    port: u16,
    trap: Arc<Trap>,
    task: JoinHandle<()>,
}

impl ReplyDropper {
    /// Proxy to the mongod of `CHRONOS_TEST_MONGO_URI`.
    pub async fn start() -> Self {
        let uri = crate::support::env("CHRONOS_TEST_MONGO_URI");
        let host = uri
            .trim_start_matches("mongodb://")
            .split(['/', ','])
            .next()
            .expect("a host in the MongoDB URI")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let trap = Arc::new(Trap::default());
        let shared = trap.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (trap, host) = (shared.clone(), host.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(host).await {
                        relay(client, server, trap).await;
                    }
                });
            }
        });
        ReplyDropper { port, trap, task }
    }

    /// A URI that reaches mongod through the proxy only (no discovery of the real address;
    /// polling monitors, so every reply answers exactly one request).
    pub fn uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&serverMonitoringMode=poll",
            self.port
        )
    }

    /// From now on, lose the reply to every request containing `marker`.
    pub fn drop_replies_to(&self, marker: Vec<u8>) {
        self.trap.markers.lock().unwrap().push(marker);
    }

    pub fn disarm(&self) {
        self.trap.markers.lock().unwrap().clear();
    }

    /// How many replies were lost so far.
    pub fn dropped(&self) -> usize {
        self.trap.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bytes a command `{<name>: "<collection>", …}` starts with in BSON.
pub fn command_on(name: &str, collection: &str) -> Vec<u8> {
    let mut m = vec![0x02];
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(&(collection.len() as i32 + 1).to_le_bytes());
    m.extend_from_slice(collection.as_bytes());
    m.push(0);
    m
}

/// One wire-protocol message (length-prefixed).
async fn read_message(r: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let n = usize::try_from(i32::from_le_bytes(len)).ok().filter(|n| *n >= 16)?;
    let mut msg = vec![0u8; n];
    msg[..4].copy_from_slice(&len);
    r.read_exact(&mut msg[4..]).await.ok()?;
    Some(msg)
}

/// Pass messages both ways; after a marked request, break the connection at its reply. The
/// driver never sends a second request on a connection before the first is answered.
async fn relay(client: TcpStream, server: TcpStream, trap: Arc<Trap>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let marked = AtomicBool::new(false);
    let up = async {
        while let Some(m) = read_message(&mut from_client).await {
            let hit = trap
                .markers
                .lock()
                .unwrap()
                .iter()
                .any(|k| m.windows(k.len()).any(|w| w == k.as_slice()));
            if hit {
                marked.store(true, Ordering::SeqCst);
            }
            if to_server.write_all(&m).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        while let Some(m) = read_message(&mut from_server).await {
            if marked.load(Ordering::SeqCst) {
                trap.dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if to_client.write_all(&m).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends, both connections close with the halves dropped here.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

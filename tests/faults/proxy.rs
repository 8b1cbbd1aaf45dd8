//! A fault-injecting TCP proxy, used to take the S3 server away from the engines without stopping
//! it (SeaweedFS binds fixed ports and is shared, so it is never stopped). "Down" closes the
//! listening socket (new connections are refused) and drops every proxied connection (requests
//! in flight fail); "up" listens again on the same port.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Fail;

pub struct FaultProxy {
    pub port: u16,
    down: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Result<Self, Fail> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("proxy bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let (down, rx) = watch::channel(false);
        let task = tokio::spawn(run(listener, port, upstream, rx));
        Ok(FaultProxy { port, down, task })
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(first: TcpListener, port: u16, upstream: SocketAddr, mut rx: watch::Receiver<bool>) {
    let mut listener = Some(first);
    loop {
        if rx.wait_for(|down| !*down).await.is_err() {
            return;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind_again(port).await {
                Some(l) => l,
                None => return,
            },
        };
        let for_connections = rx.clone();
        loop {
            tokio::select! {
                accepted = l.accept() => {
                    if let Ok((socket, _)) = accepted {
                        tokio::spawn(pipe(socket, upstream, for_connections.clone()));
                    }
                }
                changed = rx.wait_for(|down| *down) => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
        // Dropping the listener refuses new connections until the proxy is up again.
    }
}

/// The port was ours a moment ago; binding again may briefly race the kernel's clean-up.
async fn bind_again(port: u16) -> Option<TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return Some(l),
            Err(e) if std::time::Instant::now() > deadline => {
                eprintln!("[faults] proxy cannot listen on {port} again: {e}");
                return None;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = rx.wait_for(|down| *down) => {}
    }
}

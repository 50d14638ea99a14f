//! A TCP relay on a loopback port in front of the hub, which a test can cut and restore to
//! take an agent offline without stopping the hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Relay {
    /// Relays connections on a new loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (accepting, cutting) = (Arc::clone(&open), Arc::clone(&cut));
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                // Closed: the connection is refused by closing it at once.
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let cutting = Arc::clone(&cutting);
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut inbound, mut outbound) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cutting.notified() => {}
                    }
                });
            }
        });
        Self { addr, open, cut }
    }

    /// Drops every relayed connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

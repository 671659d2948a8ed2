//! A round-robin TCP load balancer on 127.0.0.1, in front of the coordinators: what an
//! initiator talks to when several instances share one database. A connection goes to the
//! next instance that accepts it; one that is down is skipped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// A running balancer; it stops when the runtime does.
pub struct Balancer {
    addr: SocketAddr,
}

impl Balancer {
    /// Starts balancing over `backends`.
    ///
    /// # Errors
    /// No port can be bound.
    pub async fn start(backends: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (backends, next) = (backends.clone(), next.clone());
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let backend = backends[(first + i) % backends.len()];
                        let connect = TcpStream::connect(backend);
                        if let Ok(Ok(mut outbound)) =
                            tokio::time::timeout(Duration::from_millis(500), connect).await
                        {
                            let _ = outbound.set_nodelay(true);
                            let mut inbound = inbound;
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

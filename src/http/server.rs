//! The accept loop: a [`Listener`] that takes connections until shutdown, and one hyper
//! HTTP/1 connection per client with a bound on how long its request head may take
//! (`http.header_read_timeout_ms`: a slow-header client is cut off instead of holding a
//! connection). Each request carries the peer address (`ConnectInfo`) for the per-client
//! limits of [`super::guard`]. Shutdown stops accepting, lets requests in flight finish and
//! closes idle keep-alive connections.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Accepts connections for one router until `shutdown`, then drains them.
pub struct Listener {
    pub listener: TcpListener,
    pub app: Router,
    pub header_read_timeout: Duration,
}

impl Listener {
    pub async fn run(self, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true);
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let conn = http.serve_connection(TokioIo::new(stream), Handler::new(&self.app, peer));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            });
        }
        graceful.shutdown().await;
    }
}

/// Serves one connection's requests with the router, tagging each with the peer address.
#[derive(Clone)]
struct Handler {
    app: Router,
    peer: SocketAddr,
}

impl Handler {
    fn new(app: &Router, peer: SocketAddr) -> Self {
        Self {
            app: app.clone(),
            peer,
        }
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Handler {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let mut req: Request = req.map(axum::body::Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(app.oneshot(req))
    }
}

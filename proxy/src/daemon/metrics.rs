//! The Prometheus metrics endpoint (`metrics = "127.0.0.1:9971"` or
//! `"unix:/run/jitproxy/metrics.sock"`; off unless set): `GET /metrics` in
//! the OpenMetrics text format, encoded by prometheus-client. What is
//! counted as it happens comes from [`crate::metrics::METRICS`]; the rest
//! (grants, the audit writer's state, the kernel programs' counters, the
//! record maps' fill, webhook notices waiting) is read at each scrape from
//! the same snapshot `jitproxy status` shows.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::MetricsAddr,
    control::{proto::StatusView, server::StatusFn},
    metrics::METRICS,
};

/// A scrape may take this long in all.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's listener, bound at start (so a taken address fails the
/// start, not a later scrape).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Binds `addr` (a Unix socket path is replaced if stale, mode 0660).
pub async fn bind(addr: &MetricsAddr) -> std::io::Result<Listener> {
    match addr {
        MetricsAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
        MetricsAddr::Unix(path) => Ok(Listener::Unix(crate::host::socket::bind_unix(path, 0o660)?)),
    }
}

/// Serves `GET /metrics` until shutdown.
pub async fn serve(listener: Listener, status: StatusFn, shutdown: CancellationToken) {
    let scraped = Arc::new(Scraped::default());
    let mut registry = Registry::with_prefix("jitproxy");
    METRICS.register(&mut registry);
    registry.register_collector(Box::new(Arc::clone(&scraped)));
    let endpoint = Arc::new(Endpoint {
        registry,
        scraped,
        status,
    });
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = accept(&listener) => match accepted {
                Ok(stream) => {
                    let endpoint = Arc::clone(&endpoint);
                    tokio::spawn(async move { endpoint.serve_connection(stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A connection to the endpoint, whichever kind of socket.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Listener::Tcp(l) => Box::new(l.accept().await?.0),
        Listener::Unix(l) => Box::new(l.accept().await?.0),
    })
}

struct Endpoint {
    registry: Registry,
    scraped: Arc<Scraped>,
    status: StatusFn,
}

impl Endpoint {
    async fn serve_connection(self: Arc<Self>, stream: Box<dyn Stream>) {
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let endpoint = Arc::clone(&self);
            async move { Ok::<_, Infallible>(endpoint.answer(&req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(3))
            .serve_connection(TokioIo::new(stream), service);
        let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
    }

    async fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/metrics" {
            return plain(StatusCode::NOT_FOUND, "only /metrics is served here\n");
        }
        if req.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        }
        let snapshot = (self.status)().await;
        let mut text = String::new();
        let encoded = {
            // One scrape at a time sees its own snapshot.
            let mut current = self.scraped.0.lock().unwrap_or_else(|p| p.into_inner());
            *current = Some(snapshot);
            drop(current);
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        };
        if encoded.is_err() {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            );
        }
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        response
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The values read at scrape time: the latest status snapshot.
#[derive(Debug, Default)]
struct Scraped(std::sync::Mutex<Option<StatusView>>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let current = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = current.as_ref() else {
            return Ok(());
        };
        let k = &s.kernel;
        let counters: [(&str, &str, u64); 10] = [
            (
                "audit_records_written",
                "Records written to the audit log since start",
                s.audit.records_written,
            ),
            (
                "audit_records_dropped",
                "Records lost because the disk refused them too long",
                s.audit.records_dropped,
            ),
            (
                "syslog_dropped",
                "Records the syslog collector did not get",
                s.audit.syslog_dropped,
            ),
            (
                "kernel_redirected",
                "Connects to targets sent to the proxy (since the programs were loaded)",
                k.redirected,
            ),
            (
                "kernel_udp_refused",
                "UDP sends and connects to targets refused",
                k.udp_refused,
            ),
            (
                "kernel_map_full",
                "Connects refused because the record map was full",
                k.map_full,
            ),
            (
                "kernel_uid_full",
                "Connects refused at the per-uid record cap",
                k.uid_full,
            ),
            (
                "kernel_mptcp_refused",
                "MPTCP connects to targets refused",
                k.mptcp_refused,
            ),
            (
                "kernel_unspecified",
                "Connects and sends to 0.0.0.0 or :: matched as the address reached",
                k.unspecified,
            ),
            (
                "kernel_exempt",
                "The proxy's own upstream connects let through by their mark",
                k.exempt,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, u64); 7] = [
            (
                "grants_open",
                "Grants live or pending now",
                s.open_grants as u64,
            ),
            (
                "audit_failing",
                "1 while the audit log cannot be written (connections are then refused)",
                u64::from(s.audit.failure.is_some()),
            ),
            (
                "kernel_records",
                "Entries in the connection record map",
                k.records,
            ),
            ("kernel_tuples", "Entries in the 4-tuple map", k.tuples),
            (
                "kernel_records_capacity",
                "Size of the connection record map",
                u64::from(proxy_common::MAX_CONNECTIONS),
            ),
            (
                "audit_queue_depth",
                "Records waiting for the audit writer",
                s.audit.queued,
            ),
            (
                "notify_undelivered",
                "Webhook notices not yet taken by their webhook",
                s.notify.undelivered,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

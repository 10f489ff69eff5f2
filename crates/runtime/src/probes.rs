//! `/healthz`, `/readyz` and `/metrics` over HTTP/1 on a configured address
//! (hyper): alive while the process serves; ready per
//! [`Health::readiness`], with the reasons in the body when not; the
//! metrics of a Prometheus registry in the OpenMetrics text format.

use crate::health::{Health, Readiness};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Connections served at once; more wait in the listen queue.
const CONNECTIONS_MAX: usize = 64;

/// Binds `addr` and serves the probes from a task of its own until the
/// process ends. Returns the bound address (port 0 picks a free one).
pub async fn serve_probes(addr: SocketAddr, health: Health, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = std::sync::Arc::clone(&slots).acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "probe listener: accept failed");
                    continue;
                }
            };
            let (health, registry) = (health.clone(), Arc::clone(&registry));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (health, registry) = (health.clone(), Arc::clone(&registry));
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &health, &registry)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A client that goes away mid-request is not our error.
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                drop(permit);
            });
        }
    });
    tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    Ok(bound)
}

fn answer<B>(req: &Request<B>, health: &Health, registry: &Registry) -> Response<Full<Bytes>> {
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = match req.uri().path() {
        "/metrics" => {
            health.readiness(); // brings `usage_ready` up to date
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => {
                    content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                    (StatusCode::OK, text)
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n")),
            }
        }
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match health.readiness() {
            Readiness::Ready => (StatusCode::OK, "ready\n".to_owned()),
            Readiness::Unready(reasons) => {
                (StatusCode::SERVICE_UNAVAILABLE, reasons.iter().map(|r| format!("{r}\n")).collect())
            }
        },
        _ => (StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /metrics\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn readyz_follows_health_and_healthz_stays_up() {
        let health = Health::default();
        let mut registry = Registry::with_prefix("usage");
        health.register(&mut registry);
        let addr = serve_probes("127.0.0.1:0".parse().unwrap(), health.clone(), Arc::new(registry)).await.unwrap();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.failed("ClickHouse insert", crate::ErrorClass::Permanent, "Code: 60. UNKNOWN_TABLE".into());
        let unready = get(addr, "/readyz").await;
        assert!(
            unready.starts_with("HTTP/1.1 503") && unready.contains("ClickHouse insert: permanent error"),
            "{unready}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains(r#"usage_step_failures_total{step="ClickHouse insert",class="permanent"} 1"#)
                && metrics.contains("usage_ready 0"),
            "{metrics}"
        );
        health.recovered("ClickHouse insert");
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    }
}

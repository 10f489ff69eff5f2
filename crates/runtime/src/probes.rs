//! `/healthz` and `/readyz` over HTTP/1 on a configured address (hyper):
//! alive while the process serves; ready per [`Health::readiness`], with
//! the reasons in the body when not.

use crate::health::{Health, Readiness};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Connections served at once; more wait in the listen queue.
const CONNECTIONS_MAX: usize = 64;

/// Binds `addr` and serves the probes from a task of its own until the
/// process ends. Returns the bound address (port 0 picks a free one).
pub async fn serve_probes(addr: SocketAddr, health: Health) -> std::io::Result<SocketAddr> {
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
            let health = health.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let health = health.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &health)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                // A client that goes away mid-request is not our error.
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                drop(permit);
            });
        }
    });
    tracing::info!(%bound, "serving /healthz and /readyz");
    Ok(bound)
}

fn answer<B>(req: &Request<B>, health: &Health) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match health.readiness() {
            Readiness::Ready => (StatusCode::OK, "ready\n".to_owned()),
            Readiness::Unready(reasons) => {
                (StatusCode::SERVICE_UNAVAILABLE, reasons.iter().map(|r| format!("{r}\n")).collect())
            }
        },
        _ => (StatusCode::NOT_FOUND, "not found: /healthz, /readyz\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
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
        let addr = serve_probes("127.0.0.1:0".parse().unwrap(), health.clone()).await.unwrap();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.failed("ClickHouse insert", crate::ErrorClass::Permanent, "Code: 60. UNKNOWN_TABLE".into());
        let unready = get(addr, "/readyz").await;
        assert!(
            unready.starts_with("HTTP/1.1 503") && unready.contains("ClickHouse insert: permanent error"),
            "{unready}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        health.recovered("ClickHouse insert");
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    }
}

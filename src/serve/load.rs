//! A bounded load test of the HTTP API on loopback, in the manner of `vllm bench serve`: a
//! fixed number of concurrent clients, each on its own keep-alive connection and key, send
//! completions until a time limit or a request count is reached; throughput, latency
//! percentiles, and the server's ledger against the clients' count of successes.

use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub clients: usize,
    /// Stop sending after this long.
    pub seconds: f64,
    /// Stop after this many requests in all (0: no count limit).
    pub max_requests: u64,
    pub max_tokens: usize,
    /// Prompts (token text), sent in turn.
    pub prompts: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    /// Status 429.
    pub throttled: u64,
    /// Any other status, or a broken connection (the request's fate unknown to the client).
    pub failed: u64,
    /// Connection attempts refused (no server listening).
    pub reconnects: u64,
    pub completion_tokens: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LoadReport {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// Read what the connection has into `buf`; a closed connection is an error.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> std::io::Result<()> {
    let n = stream.read(chunk).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// One HTTP/1.1 exchange on a keep-alive connection: (status, body).
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    stream.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf, &mut chunk).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        read_more(stream, buf, &mut chunk).await?;
    }
    Ok((status, buf[head_end..head_end + len].to_vec()))
}

/// Run the load test against a server at `addr`; client `i` uses `keys[i % keys.len()]`.
pub async fn run(addr: SocketAddr, keys: &[String], o: &LoadOptions) -> Result<LoadReport> {
    if keys.is_empty() || o.clients == 0 || o.prompts.is_empty() {
        return Err(Error::Invalid(
            "load test: needs keys, clients and prompts".into(),
        ));
    }
    if !(o.seconds.is_finite() && o.seconds > 0.0 && o.seconds <= 86_400.0) {
        return Err(Error::Invalid(format!(
            "--seconds {}: a number in (0, 86400]",
            o.seconds
        )));
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.seconds);
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let key = keys[c % keys.len()].clone();
        let o = o.clone();
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut r = LoadReport::default();
            let mut stream: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(16 << 10);
            let mut i = c;
            while Instant::now() < deadline {
                // (Re)connect: a server that was killed and restarted is found again.
                if stream.is_none() {
                    match TcpStream::connect(addr).await {
                        Ok(st) => {
                            let _ = st.set_nodelay(true);
                            stream = Some(st);
                        }
                        Err(_) => {
                            r.reconnects += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(st) = stream.as_mut() else { continue };
                if o.max_requests > 0
                    && budget.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= o.max_requests
                {
                    break;
                }
                let body = serde_json::json!({
                    "model": super::MODEL,
                    "prompt": o.prompts[i % o.prompts.len()],
                    "max_tokens": o.max_tokens,
                    "temperature": 0,
                })
                .to_string();
                i += 1;
                let req = format!(
                    "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let t = Instant::now();
                r.sent += 1;
                match exchange(st, &mut buf, req.as_bytes()).await {
                    Ok((200, body)) => {
                        r.ok += 1;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        r.completion_tokens +=
                            v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    }
                    Ok((429, _)) => r.throttled += 1,
                    Ok(_) => r.failed += 1,
                    Err(_) => {
                        r.failed += 1;
                        stream = None;
                    }
                }
            }
            (r, lat)
        }));
    }
    let mut total = LoadReport::default();
    let mut lat = Vec::new();
    for t in tasks {
        let (r, l) = t
            .await
            .map_err(|e| Error::Invalid(format!("load client: {e}")))?;
        total.sent += r.sent;
        total.ok += r.ok;
        total.throttled += r.throttled;
        total.failed += r.failed;
        total.reconnects += r.reconnects;
        total.completion_tokens += r.completion_tokens;
        lat.extend(l);
    }
    total.seconds = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    total.p50_ms = q(0.5);
    total.p99_ms = q(0.99);
    total.max_ms = lat.last().copied().unwrap_or(f64::NAN);
    Ok(total)
}

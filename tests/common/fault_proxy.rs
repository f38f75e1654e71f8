//! A TCP proxy between sdq and the S3 server that can break on demand: reset
//! connections, stall them, or answer `503 Slow Down` as S3 does under load. Written for
//! the object-store fault tests; everything else passes through byte for byte.
//!
//! A fault applies to the next `n` connections (or all of them); when the fault changes,
//! open pass-through connections are dropped so that the client's next request opens a
//! new connection and meets the fault, whatever its connection pool kept.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to a new connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Read the request, then close with a TCP reset.
    Reset,
    /// Hold the connection this long before forwarding it.
    Stall(Duration),
    /// Read the request, then answer 503 with S3's `SlowDown` error body.
    Unavailable,
}

struct State {
    fault: Fault,
    /// Connections the fault still applies to; `None`: every one.
    remaining: Option<usize>,
    /// Connections that met a fault so far.
    faulted: usize,
}

/// The proxy, listening on `port`; stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            fault: Fault::Pass,
            remaining: None,
            faulted: 0,
        }));
        let (generation, _) = watch::channel(0u64);
        let task = {
            let state = state.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let fault = {
                        let mut s = state.lock().unwrap();
                        let fault = match s.remaining {
                            Some(0) => Fault::Pass,
                            Some(ref mut n) => {
                                *n -= 1;
                                s.fault
                            }
                            None => s.fault,
                        };
                        if fault != Fault::Pass {
                            s.faulted += 1;
                        }
                        fault
                    };
                    let changed = generation.subscribe();
                    tokio::spawn(handle(client, upstream, fault, changed));
                }
            })
        };
        Self {
            port,
            state,
            generation,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies `fault` to the next `count` connections (`None`: to all), and drops the
    /// open ones.
    pub fn set(&self, fault: Fault, count: Option<usize>) {
        {
            let mut s = self.state.lock().unwrap();
            s.fault = fault;
            s.remaining = count;
            s.faulted = 0;
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections that met the current fault.
    pub fn faulted(&self) -> usize {
        self.state.lock().unwrap().faulted
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP request (headers and a `Content-Length` body) so that a fault is
/// answered only once the client has sent everything, as a real server would.
async fn read_request(client: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let headers = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - header_end;
    while have < length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(())
}

async fn handle(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    mut changed: watch::Receiver<u64>,
) {
    match fault {
        Fault::Pass => {}
        Fault::Reset => {
            let _ = read_request(&mut client).await;
            // SO_LINGER 0: close() sends RST instead of FIN.
            let _ = client.set_zero_linger();
            drop(client);
            return;
        }
        Fault::Stall(d) => tokio::time::sleep(d).await,
        Fault::Unavailable => {
            let _ = read_request(&mut client).await;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                        <Message>Please reduce your request rate.</Message></Error>";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(response.as_bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = changed.changed() => {}
    }
}

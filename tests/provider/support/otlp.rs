//! An OTLP/HTTP receiver: answers every POST with 200 and hands each
//! request's path and body to the test, which decodes them as a collector
//! would.

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub struct Receiver {
    /// The base URL: the exporters add `/v1/<signal>`.
    pub base: String,
    exports: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, exports) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, tx.clone()));
            }
        });
        Self { base, exports }
    }

    /// The URL of one signal's exports.
    pub fn url(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.base)
    }

    /// The next export: its path and its (protobuf) body.
    pub async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        self.exports.recv().await
    }
}

/// One HTTP/1.1 connection: requests with a `content-length` body, kept
/// alive until the client closes it.
async fn serve(socket: tokio::net::TcpStream, tx: mpsc::UnboundedSender<(String, Vec<u8>)>) {
    let mut socket = BufReader::new(socket);
    loop {
        let mut length = 0;
        let mut path = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if path.is_empty() {
                // The request line: `POST /v1/metrics HTTP/1.1`.
                path = line.split_whitespace().nth(1).unwrap_or("?").to_string();
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        let _ = tx.send((path, body));
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if socket.get_mut().write_all(answer).await.is_err() {
            return;
        }
    }
}

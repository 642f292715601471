//! A NATS-protocol-aware TCP proxy in front of a test server, for tests
//! that must make the JetStream API silent while everything else flows, and
//! see which acks a client sends.
//!
//! Each protocol line is read and forwarded, a message with its payload.
//! While [`Proxy::silence_jetstream_api`] is on, requests to `$JS.API.`
//! (except a pull consumer's `CONSUMER.MSG.NEXT`, which answers with
//! messages) are dropped, so the client waits for an answer that never
//! comes, as it would from a server whose JetStream hangs; while
//! [`Proxy::drop_replies`] is on, messages to the client's `_INBOX.`
//! subjects (the answers to its requests, a stream's acks among them) are
//! dropped on their way back. Every ack the client publishes to a
//! `$JS.ACK.` subject is recorded with its kind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One ack a client sent through the proxy.
#[derive(Clone, Debug)]
pub struct SeenAck {
    /// The ack subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`).
    pub subject: String,
    /// Its payload: `+ACK`, `-NAK`, `+WPI`, `+TERM`, ...
    pub kind: String,
    pub at: Instant,
}

impl SeenAck {
    /// The stream sequence of the acked message, read from the subject.
    pub fn stream_sequence(&self) -> Option<u64> {
        // $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        // (v1), or with domain and account hash before the stream (v2).
        let tokens: Vec<&str> = self.subject.split('.').collect();
        let sequence = match tokens.len() {
            9 => tokens[5],
            n if n >= 12 => tokens[7],
            _ => return None,
        };
        sequence.parse().ok()
    }
}

#[derive(Default)]
struct Shared {
    silent: AtomicBool,
    drop_replies: AtomicBool,
    acks: Mutex<Vec<SeenAck>>,
    /// `$JS.API.` subjects dropped while silent, and when.
    dropped: Mutex<Vec<(String, Instant)>>,
}

/// A running proxy; it stops accepting when dropped (open connections end
/// when either side closes).
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a loopback port of its own, forwarding to `upstream`
    /// (`127.0.0.1:<port>`).
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, Arc::clone(&accepting)));
            }
        });
        Self {
            port,
            shared,
            accept,
        }
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops (`true`) or forwards again (`false`) JetStream API requests.
    pub fn silence_jetstream_api(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::SeqCst);
    }

    /// Drops (`true`) or forwards again (`false`) the answers to the
    /// client's requests.
    pub fn drop_replies(&self, drop: bool) {
        self.shared.drop_replies.store(drop, Ordering::SeqCst);
    }

    /// Every ack seen so far.
    pub fn acks(&self) -> Vec<SeenAck> {
        self.shared.acks.lock().expect("acks").clone()
    }

    /// The JetStream API subjects dropped so far.
    pub fn dropped_requests(&self) -> Vec<String> {
        let dropped = self.shared.dropped.lock().expect("dropped");
        dropped.iter().map(|(subject, _)| subject.clone()).collect()
    }

    /// When each of [`dropped_requests`](Self::dropped_requests) was dropped.
    pub fn dropped_at(&self) -> Vec<Instant> {
        let dropped = self.shared.dropped.lock().expect("dropped");
        dropped.iter().map(|(_, at)| *at).collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Which way a connection's bytes go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_client = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let from = BufReader::new(server_read);
            let _ = forward(from, client_write, Direction::ToClient, &shared).await;
        })
    };
    let from = BufReader::new(client_read);
    let _ = forward(from, server_write, Direction::ToServer, &shared).await;
    to_client.abort();
}

/// Forwards one direction of the protocol, line by line.
async fn forward(
    mut from: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if from.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let words: Vec<&str> = text.split_whitespace().collect();
        let op = words
            .first()
            .map(|w| w.to_ascii_uppercase())
            .unwrap_or_default();
        // PUB <subject> [reply] <size>, HPUB <subject> [reply] <hdr> <total>;
        // MSG <subject> <sid> [reply] <size>, HMSG ... <hdr> <total>.
        let carries_payload = match direction {
            Direction::ToServer => op == "PUB" || op == "HPUB",
            Direction::ToClient => op == "MSG" || op == "HMSG",
        };
        let payload_len = words.last().and_then(|n| n.parse::<usize>().ok());
        let (true, Some(len)) = (carries_payload, payload_len) else {
            to.write_all(&line).await?;
            continue;
        };
        let subject = words.get(1).copied().unwrap_or_default().to_string();
        let mut payload = vec![0; len + 2];
        from.read_exact(&mut payload).await?;
        let keep = match direction {
            Direction::ToServer => to_server(shared, &words, &subject, &payload[..len]),
            Direction::ToClient => {
                !(shared.drop_replies.load(Ordering::SeqCst) && subject.starts_with("_INBOX."))
            }
        };
        if keep {
            to.write_all(&line).await?;
            to.write_all(&payload).await?;
        }
    }
}

/// Records an ack; true unless the message is a JetStream API request to
/// drop.
fn to_server(shared: &Shared, words: &[&str], subject: &str, body: &[u8]) -> bool {
    if subject.starts_with("$JS.ACK.") {
        // With headers (HPUB), the ack kind follows them.
        let kind = if words[0].eq_ignore_ascii_case("HPUB") {
            let header_len: usize = words[words.len() - 2].parse().unwrap_or(0);
            &body[header_len.min(body.len())..]
        } else {
            body
        };
        let kind = String::from_utf8_lossy(kind);
        let kind = kind
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        shared.acks.lock().expect("acks").push(SeenAck {
            subject: subject.to_string(),
            kind,
            at: Instant::now(),
        });
    }
    if shared.silent.load(Ordering::SeqCst)
        && subject.starts_with("$JS.API.")
        && !subject.starts_with("$JS.API.CONSUMER.MSG.NEXT.")
    {
        shared
            .dropped
            .lock()
            .expect("dropped")
            .push((subject.to_string(), Instant::now()));
        return false;
    }
    true
}

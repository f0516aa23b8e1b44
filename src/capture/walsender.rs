//! The connection to PostgreSQL's walsender: the streaming replication
//! protocol (startup, authentication, replication commands, CopyBoth) read
//! straight from one socket buffer.
//!
//! ```text
//!  walsender ──CopyData 'w' (XLogData) / 'k' (keepalive)──► Walsender::recv ──► stream
//!      ▲                                                      (frames sliced from one buffer)
//!      └──── CopyData 'r' (standby status: flushed = what Kafka acknowledged) ◄── set_flushed
//! ```
//!
//! The stream task reads the socket: frames are parsed in place from a large
//! read buffer (no per-message copy, no channel hop). While streaming, a small
//! task owns the write half and sends standby status updates, so the server
//! hears from capture even while it waits for Kafka. The flushed LSN reported
//! is only ever the one capture set through [`Walsender::set_flushed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, oneshot};

/// Bytes read from the socket at a time (at most).
const READ_CHUNK: usize = 256 * 1024;

/// A standby status update is sent at least this often while streaming,
/// whether or not the flushed position moved.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// A moved flushed position is reported after at most this long.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A failure of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum WalsenderError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("authentication: {0}")]
    Auth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the server ended the replication stream")]
    Ended,
}

impl WalsenderError {
    /// True when reconnecting may succeed without anyone acting.
    pub fn is_transient(&self) -> bool {
        match self {
            WalsenderError::Io(_) | WalsenderError::Ended => true,
            WalsenderError::Server { code, .. } => super::error::transient_state(code),
            WalsenderError::Auth(_) | WalsenderError::Protocol(_) => false,
        }
    }

    fn protocol(what: impl Into<String>) -> Self {
        WalsenderError::Protocol(what.into())
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub endpoint: Endpoint,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub database: String,
    /// The startup `options` parameter (`-c name=value …`).
    pub options: String,
    pub application_name: String,
}

#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    /// The socket directory and port, as libpq names them.
    Unix {
        dir: std::path::PathBuf,
        port: u16,
    },
}

/// What the walsender sent while streaming.
#[derive(Debug)]
pub enum WalEvent {
    /// One pgoutput message starting at `wal_start`.
    XLogData { wal_start: u64, data: Bytes },
    /// The server's position; nothing to deliver before it.
    KeepAlive { wal_end: u64 },
}

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

type Writer = WriteHalf<Box<dyn Socket>>;

/// What the stream task tells the status writer.
struct Progress {
    /// Highest LSN capture allows to report as flushed.
    flushed: AtomicU64,
    /// The server asked for a status update.
    reply_requested: AtomicBool,
    wake: Notify,
}

/// The status writer while streaming: stop it to get the write half back.
struct StatusWriter {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Writer, WalsenderError>>,
}

/// A replication connection (`replication=database`).
pub struct Walsender {
    reader: ReadHalf<Box<dyn Socket>>,
    /// The write half before streaming (commands); the status writer has it
    /// while streaming.
    writer: Option<Writer>,
    status: Option<StatusWriter>,
    progress: Arc<Progress>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// One backend message: its tag and body (without tag and length).
struct Frame {
    tag: u8,
    body: Bytes,
}

impl Walsender {
    /// Connects and authenticates; the session then accepts replication commands.
    pub async fn connect(p: &ConnectParams, start: u64) -> Result<Self, WalsenderError> {
        let io: Box<dyn Socket> = match &p.endpoint {
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            #[cfg(unix)]
            Endpoint::Unix { dir, port } => Box::new(
                tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?,
            ),
            #[cfg(not(unix))]
            Endpoint::Unix { .. } => {
                return Err(WalsenderError::protocol(
                    "unix sockets are not supported here",
                ));
            }
        };
        let (reader, writer) = tokio::io::split(io);
        let mut w = Walsender {
            reader,
            writer: Some(writer),
            status: None,
            progress: Arc::new(Progress {
                flushed: AtomicU64::new(start),
                reply_requested: AtomicBool::new(false),
                wake: Notify::new(),
            }),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
        };
        let params = [
            ("user", p.user.as_str()),
            ("database", p.database.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", p.application_name.as_str()),
            ("options", p.options.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut w.wbuf)?;
        w.flush().await?;
        w.authenticate(p).await?;
        Ok(w)
    }

    async fn authenticate(&mut self, p: &ConnectParams) -> Result<(), WalsenderError> {
        let password = || {
            p.password
                .as_deref()
                .ok_or_else(|| WalsenderError::Auth("the server asks for a password".into()))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {
                    let mut body = f.body;
                    if body.len() < 4 {
                        return Err(WalsenderError::protocol("short authentication request"));
                    }
                    match body.get_i32() {
                        0 => {}
                        3 => {
                            frontend::password_message(password()?, &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        5 => {
                            if body.len() < 4 {
                                return Err(WalsenderError::protocol("short MD5 salt"));
                            }
                            let salt = [body[0], body[1], body[2], body[3]];
                            let hash = md5_hash(p.user.as_bytes(), password()?, salt);
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        10 => {
                            let offers_scram = body
                                .split(|&b| b == 0)
                                .any(|m| m == SCRAM_SHA_256.as_bytes());
                            if !offers_scram {
                                return Err(WalsenderError::Auth(
                                    "the server offers no SASL mechanism this client knows".into(),
                                ));
                            }
                            let s = ScramSha256::new(password()?, ChannelBinding::unrequested());
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                s.message(),
                                &mut self.wbuf,
                            )?;
                            scram = Some(s);
                            self.flush().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                WalsenderError::protocol("SASL continue before SASL start")
                            })?;
                            s.update(&body)
                                .map_err(|e| WalsenderError::Auth(e.to_string()))?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                WalsenderError::protocol("SASL final before SASL start")
                            })?;
                            s.finish(&body)
                                .map_err(|e| WalsenderError::Auth(e.to_string()))?;
                        }
                        code => {
                            return Err(WalsenderError::Auth(format!(
                                "unsupported authentication method (code {code})"
                            )));
                        }
                    }
                }
                b'E' => return Err(server_error(&f.body)),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    /// Runs one replication command with the simple query protocol and
    /// returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, WalsenderError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' => rows.push(data_row(f.body)?),
                b'E' => error = Some(server_error(&f.body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION` and waits until the server streams.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: u64,
        publication: &str,
    ) -> Result<(), WalsenderError> {
        let sql = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {:X}/{:X} \
             (proto_version '1', publication_names '{}', messages 'true')",
            start >> 32,
            start & 0xffff_ffff,
            publication.replace('\'', "''"),
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'W' => break,
                b'E' => {
                    let e = server_error(&f.body);
                    // The server is ready for another command after an error.
                    while self.read_frame().await?.tag != b'Z' {}
                    return Err(e);
                }
                _ => {}
            }
        }
        let writer = self
            .writer
            .take()
            .ok_or_else(|| WalsenderError::protocol("the session streams already"))?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(write_status(writer, self.progress.clone(), stopped));
        self.status = Some(StatusWriter { stop, task });
        Ok(())
    }

    /// Allows `lsn` to be reported as flushed (never moves back).
    pub fn set_flushed(&self, lsn: u64) {
        self.progress.flushed.fetch_max(lsn, Ordering::AcqRel);
    }

    /// The next streamed event. Cancel-safe: bytes read stay in the buffer.
    pub async fn recv(&mut self) -> Result<WalEvent, WalsenderError> {
        loop {
            if let Some(ev) = self.next_buffered()? {
                return Ok(ev);
            }
            self.fill().await?;
        }
    }

    /// Reads what the socket has ready without waiting; `false` when it had
    /// nothing, i.e. the stream is caught up with the server.
    pub fn try_fill(&mut self) -> Result<bool, WalsenderError> {
        match futures::FutureExt::now_or_never(self.fill()) {
            Some(r) => r.map(|()| true),
            None => Ok(false),
        }
    }

    /// The next event already in the buffer, without reading the socket.
    pub fn next_buffered(&mut self) -> Result<Option<WalEvent>, WalsenderError> {
        while let Some(f) = self.take_frame()? {
            match f.tag {
                b'd' => {
                    if let Some(ev) = self.copy_data(f.body)? {
                        return Ok(Some(ev));
                    }
                }
                b'E' => return Err(server_error(&f.body)),
                b'c' => return Err(WalsenderError::Ended),
                _ => {}
            }
        }
        Ok(None)
    }

    fn copy_data(&mut self, mut body: Bytes) -> Result<Option<WalEvent>, WalsenderError> {
        match body.first() {
            Some(b'w') if body.len() >= 25 => {
                body.advance(1);
                let wal_start = body.get_u64();
                body.advance(16); // wal_end, send time
                Ok(Some(WalEvent::XLogData {
                    wal_start,
                    data: body,
                }))
            }
            Some(b'k') if body.len() >= 18 => {
                body.advance(1);
                let wal_end = body.get_u64();
                body.advance(8); // send time
                if body.get_u8() == 1 {
                    self.progress.reply_requested.store(true, Ordering::Release);
                    self.progress.wake.notify_one();
                }
                Ok(Some(WalEvent::KeepAlive { wal_end }))
            }
            Some(b'w' | b'k') => Err(WalsenderError::protocol("truncated CopyData message")),
            _ => Ok(None),
        }
    }

    /// Reports the flushed position, ends streaming and waits until the
    /// server confirms (its CopyDone comes after it processed the report),
    /// then closes the session. Returns the position reported.
    pub async fn finish(mut self, timeout: Duration) -> Result<u64, WalsenderError> {
        let reported = self.progress.flushed.load(Ordering::Acquire);
        let done = async {
            if let Some(status) = self.status.take() {
                let _ = status.stop.send(());
                let writer = status
                    .task
                    .await
                    .map_err(|e| WalsenderError::protocol(format!("status writer: {e}")))??;
                self.writer = Some(writer);
                loop {
                    match self.read_frame().await?.tag {
                        b'c' | b'Z' | b'C' => break,
                        _ => {}
                    }
                }
            }
            frontend::terminate(&mut self.wbuf);
            self.flush().await?;
            Ok::<_, WalsenderError>(())
        };
        tokio::time::timeout(timeout, done).await.map_err(|_| {
            WalsenderError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the server did not confirm the end of streaming",
            ))
        })??;
        Ok(reported)
    }

    async fn flush(&mut self) -> Result<(), WalsenderError> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| WalsenderError::protocol("the session is streaming"))?;
        w.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        w.flush().await?;
        Ok(())
    }

    /// Reads more bytes into the buffer. Cancel-safe.
    async fn fill(&mut self) -> Result<(), WalsenderError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        if self.reader.read_buf(&mut self.rbuf).await? == 0 {
            return Err(WalsenderError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// Splits one complete message off the buffer, if there is one.
    fn take_frame(&mut self) -> Result<Option<Frame>, WalsenderError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l >= 4)
            .ok_or_else(|| WalsenderError::protocol(format!("invalid message length {len}")))?;
        if self.rbuf.len() < 1 + len {
            self.rbuf.reserve(1 + len - self.rbuf.len());
            return Ok(None);
        }
        let mut raw = self.rbuf.split_to(1 + len).freeze();
        let tag = raw[0];
        raw.advance(5);
        Ok(Some(Frame { tag, body: raw }))
    }

    async fn read_frame(&mut self) -> Result<Frame, WalsenderError> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }
}

/// Sends standby status updates while streaming: when the server asks, when
/// the flushed position moved (checked every [`PROGRESS_INTERVAL`]) and at
/// least every [`STATUS_INTERVAL`]. On stop, sends a last one and CopyDone,
/// and hands the write half back.
async fn write_status(
    mut w: Writer,
    progress: Arc<Progress>,
    mut stop: oneshot::Receiver<()>,
) -> Result<Writer, WalsenderError> {
    let mut reported = 0u64;
    let mut last = Instant::now();
    let mut buf = BytesMut::with_capacity(64);
    loop {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = progress.wake.notified() => false,
            _ = tokio::time::sleep(PROGRESS_INTERVAL) => false,
        };
        let flushed = progress.flushed.load(Ordering::Acquire);
        let asked = progress.reply_requested.swap(false, Ordering::AcqRel);
        if stopping || asked || flushed > reported || last.elapsed() >= STATUS_INTERVAL {
            status_update(flushed, &mut buf)?;
            reported = flushed;
            last = Instant::now();
        }
        if stopping {
            frontend::copy_done(&mut buf);
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            w.flush().await?;
            buf.clear();
        }
        if stopping {
            return Ok(w);
        }
    }
}

/// A standby status update: write, flush and apply positions are all `lsn`.
fn status_update(lsn: u64, out: &mut BytesMut) -> Result<(), WalsenderError> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
        - PG_EPOCH_OFFSET_US;
    let mut msg = [0u8; 34];
    msg[0] = b'r';
    let lsn = lsn.to_be_bytes();
    msg[1..9].copy_from_slice(&lsn);
    msg[9..17].copy_from_slice(&lsn);
    msg[17..25].copy_from_slice(&lsn);
    msg[25..33].copy_from_slice(&now_us.to_be_bytes());
    frontend::CopyData::new(&msg[..])?.write(out);
    Ok(())
}

/// The SQLSTATE and message of an ErrorResponse body.
fn server_error(body: &[u8]) -> WalsenderError {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]);
        match kind {
            b'C' => code = value.into_owned(),
            b'M' => message = value.into_owned(),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    WalsenderError::Server { code, message }
}

fn data_row(mut body: Bytes) -> Result<Vec<Option<String>>, WalsenderError> {
    let short = || WalsenderError::protocol("truncated DataRow");
    if body.len() < 2 {
        return Err(short());
    }
    let n = body.get_i16().max(0) as usize;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        if body.len() < 4 {
            return Err(short());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(short());
        }
        row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
        body.advance(len);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body = b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0";
        match server_error(body) {
            WalsenderError::Server { code, message } => {
                assert_eq!(code, "42704");
                assert_eq!(message, "replication slot \"x\" does not exist");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_going_away_is_transient_and_a_refusal_is_not() {
        let server = |code: &str| WalsenderError::Server {
            code: code.into(),
            message: String::new(),
        };
        // Shutting down, starting up, connection failure, slot still held.
        for code in ["57P01", "57P02", "57P03", "08006", "55006"] {
            assert!(server(code).is_transient(), "{code}");
        }
        // No such slot, no permission, bad configuration: someone must act.
        for code in ["42704", "42501", "55000"] {
            assert!(!server(code).is_transient(), "{code}");
        }
        assert!(WalsenderError::Ended.is_transient());
        assert!(!WalsenderError::Auth("password".into()).is_transient());
    }

    #[test]
    fn parses_data_rows_with_nulls() {
        let mut b = Vec::new();
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"0/1");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        let row = data_row(Bytes::from(b)).unwrap();
        assert_eq!(row, vec![Some("0/1".to_string()), None]);
    }
}

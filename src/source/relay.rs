//! A relay on loopback between libgit2 and a git server over plain http, one per
//! network step, so that the step can be cut off from outside.
//!
//! libgit2 blocks in socket reads whose timeout restarts with every byte, and
//! its progress callbacks fire only every 100 KiB of pack data (never while it
//! reads the refs a server advertises), so a server that drips a byte a second
//! would hold the blocking thread, and the mirror lock it holds, for as long as it
//! likes. An http step is therefore handed the URL of a relay (same path, same
//! user) instead of the server's, and the relay shuts every connection once the
//! step's [`Stop`] is set or the relay is dropped: the read in libgit2 then fails
//! at once and the step ends.
//!
//! An https step cannot be handed another URL (the certificate names the
//! server), so its relay is a proxy instead: libgit2 1.9 sends https through a
//! proxy as a `CONNECT` tunnel ([`Relay::tunnel`], handed to libgit2 as its
//! proxy), the relay answers `200` and pipes the encrypted bytes both ways, and
//! the stop cuts the tunnel the same way. (libgit2 connects to an http server
//! itself even with a proxy set, hence the rewritten URL for http.)
//!
//! Invariants:
//! - Listens on 127.0.0.1, on a port of its own, for the life of one step.
//! - Connects only to the addresses it was given (those the SSRF guard passed for
//!   the step's URL), whatever a request says: the address checked is the address
//!   used, with no second name lookup in between.
//! - Requests reach the server as libgit2 wrote them but for the `Host` header,
//!   which names the server's authority again; answers pass through untouched.
//! - Every connection ends within [`POLL`] of the stop or the drop; a server that
//!   cannot be reached within the connect timeout gets libgit2 a `502`.

use super::stop::Stop;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a waiting relay thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// The most one line of a request head or of a chunked body may hold.
const MAX_LINE: usize = 64 * 1024;

/// A running relay; stopped when dropped.
pub(super) struct Relay {
    port: u16,
    done: Arc<AtomicBool>,
    tunnel: bool,
}

/// When the relay's connections must end: its step's stop, or its drop.
#[derive(Clone)]
struct Ends {
    done: Arc<AtomicBool>,
    stop: Stop,
}

impl Ends {
    fn now(&self) -> bool {
        self.done.load(Ordering::Relaxed) || self.stop.is_set()
    }

    fn check(&self) -> io::Result<()> {
        if self.now() {
            Err(io::Error::other("the git step was stopped"))
        } else {
            Ok(())
        }
    }
}

/// Where a relay's connections go.
struct Route {
    targets: Vec<SocketAddr>,
    /// The `Host` header line to send; empty for a tunnel.
    host: Vec<u8>,
    timeout: Duration,
    /// A `CONNECT` proxy (https) rather than an http relay.
    tunnel: bool,
}

impl Relay {
    /// Relays to `targets` (tried in order), naming `authority` (`host[:port]`) in
    /// each request's `Host` header. Connecting takes at most `timeout`; a server
    /// silent that long is left to libgit2's own read timeout.
    pub fn start(
        targets: Vec<SocketAddr>,
        authority: &str,
        stop: &Stop,
        timeout: Duration,
    ) -> io::Result<Relay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let route = Route {
            targets,
            host: format!("Host: {authority}\r\n").into_bytes(),
            timeout,
            tunnel: false,
        };
        Self::run(listener, route, stop)
    }

    /// A `CONNECT` proxy for an https step: whatever host a `CONNECT` names, the
    /// tunnel goes to `targets` (tried in order), and the stop cuts it.
    pub fn tunnel(targets: Vec<SocketAddr>, stop: &Stop, timeout: Duration) -> io::Result<Relay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let route = Route {
            targets,
            host: Vec::new(),
            timeout,
            tunnel: true,
        };
        Self::run(listener, route, stop)
    }

    fn run(listener: TcpListener, route: Route, stop: &Stop) -> io::Result<Relay> {
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let done = Arc::new(AtomicBool::new(false));
        let ends = Ends {
            done: done.clone(),
            stop: stop.clone(),
        };
        let tunnel = route.tunnel;
        let route = Arc::new(route);
        std::thread::Builder::new()
            .name("git-relay".into())
            .spawn(move || accept(listener, route, ends))?;
        Ok(Relay { port, done, tunnel })
    }

    /// Whether this relay is a `CONNECT` tunnel (to be given as a proxy).
    pub fn is_tunnel(&self) -> bool {
        self.tunnel
    }

    /// The relay as libgit2's proxy (`http://127.0.0.1:<port>`), for a tunnel.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `url` (an `http://` URL) with its host and port replaced by the relay's.
    pub fn url_for(&self, url: &str) -> String {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let user = authority.rfind('@').map_or("", |at| &authority[..=at]);
        format!("http://{user}127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

fn accept(listener: TcpListener, route: Arc<Route>, ends: Ends) {
    while !ends.now() {
        match listener.accept() {
            Ok((client, _)) => {
                let (route, ends) = (route.clone(), ends.clone());
                let spawned = std::thread::Builder::new()
                    .name("git-relay-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(client, &route, &ends) {
                            tracing::debug!(error = %e, "git relay connection ended");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a git relay thread");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::debug!(error = %e, "git relay accept failed");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn serve(client: TcpStream, route: &Route, ends: &Ends) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(POLL))?;
    client.set_write_timeout(Some(route.timeout))?;
    if route.tunnel {
        return tunnel(client, route, ends);
    }
    let server = connect_for(&client, route, ends)?;
    let back = answers_back(&server, &client, ends)?;
    let mut requests = Reader {
        stream: client.try_clone()?,
        buf: Vec::new(),
        ends,
    };
    let sent = forward_requests(&mut requests, &server, &route.host);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = back.join();
    sent
}

/// A `CONNECT` tunnel: the request head is read (and its target ignored: the
/// tunnel goes to the checked addresses), `200` answered, then bytes piped both
/// ways until either side ends or the stop.
fn tunnel(client: TcpStream, route: &Route, ends: &Ends) -> io::Result<()> {
    let mut head = Reader {
        stream: client.try_clone()?,
        buf: Vec::new(),
        ends,
    };
    let first = head.line()?.unwrap_or_default();
    if !first.starts_with(b"CONNECT ") {
        let _ = (&client).write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return Err(io::Error::other("a tunnel takes only CONNECT"));
    }
    while !is_blank(&head.line()?.unwrap_or_else(|| b"\r\n".to_vec())) {}
    let server = connect_for(&client, route, ends)?;
    (&client).write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    // What the client sent after the head (the start of its TLS handshake).
    (&server).write_all(&head.buf)?;
    let back = answers_back(&server, &client, ends)?;
    pump(client, server, ends);
    let _ = back.join();
    Ok(())
}

/// The connection to the server for `client`, set to wait in [`POLL`] steps; when
/// no target answers, `client` is told `502` and closed.
fn connect_for(client: &TcpStream, route: &Route, ends: &Ends) -> io::Result<TcpStream> {
    let server = match connect(&route.targets, route.timeout, ends) {
        Ok(server) => server,
        Err(e) => {
            let _ = (&*client).write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = client.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    server.set_read_timeout(Some(POLL))?;
    server.set_write_timeout(Some(route.timeout))?;
    Ok(server)
}

/// A thread copying the server's answers to the client until either ends or the stop.
fn answers_back(
    server: &TcpStream,
    client: &TcpStream,
    ends: &Ends,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (from_server, to_client) = (server.try_clone()?, client.try_clone()?);
    let ends = ends.clone();
    std::thread::Builder::new()
        .name("git-relay-back".into())
        .spawn(move || pump(from_server, to_client, &ends))
}

fn connect(targets: &[SocketAddr], timeout: Duration, ends: &Ends) -> io::Result<TcpStream> {
    let mut last = io::Error::other("the host has no address");
    for addr in targets {
        ends.check()?;
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

/// Copies requests from libgit2 to the server, one after the other on the same
/// connection, with the `Host` header replaced; ends at the client's end of
/// stream (`Ok`) or the stop.
fn forward_requests(from: &mut Reader, mut to: &TcpStream, host: &[u8]) -> io::Result<()> {
    let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
    loop {
        let Some(first) = from.line()? else {
            return Ok(());
        };
        to.write_all(&first)?;
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let line = from.line()?.ok_or_else(eof)?;
            if is_blank(&line) {
                to.write_all(&line)?;
                break;
            }
            let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
            let (name, value) = text.split_once(':').unwrap_or((&text, ""));
            match name.trim() {
                "host" => {
                    to.write_all(host)?;
                    continue;
                }
                "content-length" => {
                    length = value.trim().parse().map_err(io::Error::other)?;
                }
                "transfer-encoding" => chunked = value.contains("chunked"),
                _ => {}
            }
            to.write_all(&line)?;
        }
        if !chunked {
            from.copy(length, to)?;
            continue;
        }
        loop {
            let size_line = from.line()?.ok_or_else(eof)?;
            to.write_all(&size_line)?;
            let text = String::from_utf8_lossy(&size_line);
            let size = text.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(io::Error::other)?;
            if size > 0 {
                from.copy(size + 2, to)?; // the chunk and its CRLF
                continue;
            }
            // Trailers, then the blank line.
            loop {
                let line = from.line()?.ok_or_else(eof)?;
                to.write_all(&line)?;
                if is_blank(&line) {
                    break;
                }
            }
            break;
        }
    }
}

/// Reads libgit2's side of a connection, waiting in [`POLL`] steps so a stop is
/// seen.
struct Reader<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    ends: &'a Ends,
}

impl Reader<'_> {
    /// Reads more into the buffer; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            self.ends.check()?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if waiting(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One line, its line end included; `None` at the end of the stream before it.
    fn line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(self.buf.drain(..=end).collect()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::other("a request line is too long"));
            }
            if !self.fill()? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Copies the next `n` bytes to `to`.
    fn copy(&mut self, mut n: usize, mut to: &TcpStream) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = n.min(self.buf.len());
            to.write_all(&self.buf[..take])?;
            self.buf.drain(..take);
            n -= take;
        }
        Ok(())
    }
}

/// Copies `from` to `to` until either ends or the relay must stop; then shuts
/// both, which ends the copy the other way too.
fn pump(mut from: TcpStream, mut to: TcpStream, ends: &Ends) {
    let mut buf = [0u8; 16 * 1024];
    while !ends.now() {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if waiting(&e) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn waiting(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_to(target: SocketAddr, stop: &Stop) -> (Relay, TcpStream) {
        let relay = Relay::start(
            vec![target],
            "git.example:8080",
            stop,
            Duration::from_secs(5),
        )
        .unwrap();
        let client = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
        (relay, client)
    }

    #[test]
    fn urls_keep_their_user_and_path() {
        let relay = Relay::start(vec![], "h", &Stop::default(), Duration::from_secs(1)).unwrap();
        let port = relay.port;
        assert_eq!(
            relay.url_for("http://bot:tok@Git.Example:81/a/b.git?x=1"),
            format!("http://bot:tok@127.0.0.1:{port}/a/b.git?x=1")
        );
        assert_eq!(
            relay.url_for("http://h"),
            format!("http://127.0.0.1:{port}")
        );
    }

    #[test]
    fn requests_go_through_with_the_servers_host_and_answers_come_back() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stop = Stop::default();
        let (_relay, mut client) = relay_to(server.local_addr().unwrap(), &stop);
        let requests = "GET /a HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n\
            POST /b HTTP/1.1\r\nhost: 127.0.0.1:1\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        client.write_all(requests.as_bytes()).unwrap();
        let (mut upstream, _) = server.accept().unwrap();
        let want = requests
            .replace("Host: 127.0.0.1:1", "Host: git.example:8080")
            .replace("host: 127.0.0.1:1", "Host: git.example:8080")
            .replace("Host: x", "Host: git.example:8080");
        let mut got = vec![0u8; want.len()];
        upstream.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        upstream.write_all(b"HTTP/1.1 200 OK\r\n\r\npong").unwrap();
        let mut answer = [0u8; 23];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n\r\npong");
    }

    #[test]
    fn a_stop_cuts_a_server_that_drips() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let stop = Stop::default();
        let (_relay, mut client) = relay_to(server.local_addr().unwrap(), &stop);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let (mut upstream, _) = server.accept().unwrap();
        upstream.write_all(b"H").unwrap();
        let mut first = [0u8; 1];
        client.read_exact(&mut first).unwrap();
        stop.set();
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest); // ends: EOF or reset
        assert!(rest.is_empty(), "{rest:?}");
        let mut gone = Vec::new();
        let _ = upstream.read_to_end(&mut gone); // the server's side ends too
    }

    #[test]
    fn an_unreachable_server_gets_a_502() {
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (_relay, mut client) = relay_to(free, &Stop::default());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    }
}

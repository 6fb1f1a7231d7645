//! A small smart-HTTP git server on loopback for the tests: `git http-backend`
//! (CGI) behind a std TCP listener, with an optional token check. It serves the
//! repositories under a folder, like a forge would, so the tests cover what
//! libgit2 does over HTTP: refs advertised, packs negotiated, and a commit that
//! is no branch tip refused by id (git's default `uploadpack.allow*SHA1InWant`).

use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Serves the repositories under `root` at the returned `http://127.0.0.1:<port>`.
/// With a `token`, every request must carry it as the password of Basic auth.
pub fn serve(root: &Path, token: Option<&str>) -> String {
    serve_on(TcpListener::bind("127.0.0.1:0").unwrap(), root, token)
}

/// [`serve`] on a listener the caller bound (another loopback address, say).
pub fn serve_on(listener: TcpListener, root: &Path, token: Option<&str>) -> String {
    listener.set_nonblocking(false).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let root = root.to_path_buf();
    let expected = token.map(|t| format!("Basic {}", BASE64.encode(format!("x-access-token:{t}"))));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (root, expected) = (root.clone(), expected.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, &root, expected.as_deref());
            });
        }
    });
    base
}

/// Answers one request on `stream` like [`serve`] does.
pub fn handle(mut stream: TcpStream, root: &PathBuf, expected: Option<&str>) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut words = request.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let body = read_body(&mut reader, &headers)?;

    if let Some(expected) = expected {
        if headers.get("authorization").map(String::as_str) != Some(expected) {
            return stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }

    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output()?;
    let _ = writer.join();

    let out = output.stdout;
    let (head_end, sep) = find(&out, b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| find(&out, b"\n\n").map(|i| (i, 2)))
        .unwrap_or((0, 0));
    let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let payload = &out[head_end + sep..];
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    let mut extra = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_string()
            }
            Some(_) => extra.push_str(&format!("{line}\r\n")),
            None => {}
        }
    }
    response.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    response.extend_from_slice(payload);
    stream.write_all(&response)
}

fn read_body(reader: &mut impl BufRead, headers: &HashMap<String, String>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().unwrap_or(0);
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; size + 2]; // the chunk and its CRLF
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

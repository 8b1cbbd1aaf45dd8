//! Scenarios (e) bad input on every route and (f) tenant isolation, over a raw HTTP/1.1 client:
//! a URL library would normalise `..`, escape NUL or refuse invalid UTF-8, which is exactly
//! what must reach the server unchanged.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Fail;

/// Every route, as (method, path template, a body it accepts). `{db}`, `{c}` and `{id}` are
/// filled in per case.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/v1/{db}/{c}/items?id={id}", r#"{"a":1}"#),
    ("GET", "/v1/{db}/{c}/items", ""),
    ("GET", "/v1/{db}/{c}/items/{id}", ""),
    ("PUT", "/v1/{db}/{c}/items/{id}", r#"{"a":1}"#),
    ("PATCH", "/v1/{db}/{c}/items/{id}", r#"{"a":1}"#),
    ("DELETE", "/v1/{db}/{c}/items/{id}", ""),
    ("GET", "/v1/{db}/{c}/items/{id}/versions", ""),
    ("POST", "/v1/{db}/{c}/items/{id}/restore", r#"{"ov":0}"#),
    ("POST", "/v1/{db}/{c}/items/{id}/process", ""),
    ("POST", "/v1/{db}/{c}/restore", r#"{"cv":1,"dryRun":true}"#),
    ("GET", "/v1/{db}/{c}/counters", ""),
    ("POST", "/v1/{db}/{c}/counters/reset", ""),
    ("POST", "/v1/{db}/{c}/process", ""),
    ("POST", "/v1/{db}/{c}/prune", r#"{"keepLast":1}"#),
    ("GET", "/v1/{db}/_operations/{id}", ""),
    ("DELETE", "/v1/{db}/_operations/{id}", ""),
    ("POST", "/v1/{db}/_operations/{id}/retry", ""),
    ("GET", "/v1/{db}/_queue", ""),
    ("GET", "/v1/{db}/_queue/operations", ""),
    ("GET", "/v1/admin/databases/{db}/validate", ""),
    ("POST", "/v1/admin/databases/{db}/buckets", "{}"),
    ("POST", "/v1/admin/databases/{db}/s3-test", ""),
];

/// One raw request.
pub struct Raw {
    pub method: String,
    pub target: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn new(method: &str, target: impl Into<Vec<u8>>) -> Self {
        Raw {
            method: method.to_owned(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn json(self, body: impl Into<Vec<u8>>) -> Self {
        let mut r = self.header("Content-Type", "application/json");
        r.body = body.into();
        r
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 512);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// The answer's status, and its body (up to 64 KiB, for messages).
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Send a request and read the answer. The request is written while the answer is read, so an
/// early answer (413 before the body is all sent) is seen rather than lost to a reset.
pub async fn send(addr: &str, req: &Raw) -> Result<Answer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let bytes = req.bytes();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if buf.len() < 256 * 1024 {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
                // A reset after the answer arrived is fine (the server closed on an unread body).
                Err(e) if !buf.is_empty() => {
                    let _ = e;
                    break Ok(());
                }
                Err(e) => break Err(format!("read: {e}")),
            }
        }
    })
    .await;
    writer.abort();
    match read {
        Err(_) => return Err("no answer within 60 s".into()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", &text[..text.len().min(200)]))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok(Answer { status, body })
}

/// Percent-encode every byte that is not unreserved (so the value arrives as bytes, not syntax).
pub fn encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() * 3);
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Path-segment values that are never a valid db, collection or id, as they go on the wire.
pub fn bad_segments() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("encoded slash".into(), b"a%2Fb".to_vec()),
        ("dot-dot".into(), b"..".to_vec()),
        ("encoded dot-dot".into(), b"%2E%2E".to_vec()),
        ("encoded dot-dot-slash".into(), b"..%2F..%2Fetc".to_vec()),
        ("NUL".into(), b"a%00b".to_vec()),
        ("raw control char".into(), b"a\x01b".to_vec()),
        ("encoded control chars".into(), b"%01%1B%7F".to_vec()),
        ("encoded newline".into(), b"a%0D%0Ab".to_vec()),
        ("invalid UTF-8".into(), b"%FF%FE%80".to_vec()),
        ("raw invalid UTF-8".into(), b"a\xff\xfeb".to_vec()),
        ("non-ASCII".into(), b"%C3%A9t%C3%A9".to_vec()),
        ("space".into(), b"a%20b".to_vec()),
        ("leading dash".into(), b"-x".to_vec()),
        ("reserved".into(), b"system_x".to_vec()),
        ("200 chars".into(), vec![b'x'; 200]),
        ("1 MB".into(), vec![b'x'; 1 << 20]),
    ];
    v.push(("8 KB".into(), vec![b'y'; 8 << 10]));
    v
}

/// Deeply nested JSON: `[[[…]]]` or `{"a":{"a":…}}`.
pub fn nested(depth: usize, object: bool) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = if object { (b"{\"a\":", b"}") } else { (b"[", b"]") };
    let mut out = Vec::with_capacity(depth * (open.len() + close.len()) + 4);
    for _ in 0..depth {
        out.extend_from_slice(open);
    }
    out.extend_from_slice(if object { b"1" } else { b"" });
    for _ in 0..depth {
        out.extend_from_slice(close);
    }
    if object {
        // Wrap so the top level is an object either way.
        let mut o = b"{\"x\":".to_vec();
        o.extend_from_slice(&out);
        o.push(b'}');
        o
    } else {
        out
    }
}

/// `{"a":[0,0,…]}` of about `bytes` bytes.
pub fn huge_array(bytes: usize, top_level: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 16);
    out.extend_from_slice(if top_level { b"[" } else { b"{\"a\":[" });
    while out.len() < bytes {
        out.extend_from_slice(b"0,");
    }
    out.extend_from_slice(b"0]");
    if !top_level {
        out.push(b'}');
    }
    out
}

/// Fill a route template.
pub fn fill(template: &str, db: &[u8], c: &[u8], id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = template.as_bytes();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(b"{db}") {
            out.extend_from_slice(db);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(b"{c}") {
            out.extend_from_slice(c);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(b"{id}") {
            out.extend_from_slice(id);
            rest = r;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

pub fn addr_of(url: &str) -> Result<String, Fail> {
    url.strip_prefix("http://")
        .map(str::to_owned)
        .ok_or_else(|| format!("not an http URL: {url}").into())
}

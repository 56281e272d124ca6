//! A FAKE Kubernetes API server for the tests of `homelab_federation` through Terraform (no API
//! server can run here): plain HTTP on 127.0.0.1 inside a network namespace the test made, it
//! serves exactly the NetworkPolicy calls the provider makes (server-side apply PATCH, GET,
//! DELETE under `/apis/networking.k8s.io/v1/namespaces/<ns>/networkpolicies/<name>`) from an
//! in-memory store, answers anything else 404 (and records it as unexpected), and records every
//! request so a test can assert what was sent. The test can delete objects out of band.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

const PREFIX: &str = "/apis/networking.k8s.io/v1/namespaces/";

/// One request the fake served.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string (may be empty).
    pub query: String,
    /// Content-Type header.
    pub content_type: String,
}

#[derive(Default)]
struct Inner {
    /// (namespace, name) -> object.
    objects: BTreeMap<(String, String), Value>,
    seen: Vec<Seen>,
    unexpected: Vec<String>,
    version: u64,
}

/// A running fake cluster API.
pub struct FakeCluster {
    port: u16,
    inner: Arc<Mutex<Inner>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCluster {
    /// Start serving on 127.0.0.1 (a free port) inside the named network namespace `netns`
    /// (the listening thread joins it; the caller's threads stay where they are).
    pub fn start_in_netns(netns: &str) -> FakeCluster {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{netns}");
        let (i2, s2) = (inner.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on this thread only, with a valid namespace file descriptor.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind in the namespace");
            listener.set_nonblocking(true).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            let mut conns = Vec::new();
            while !s2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (i3, s3) = (i2.clone(), s2.clone());
                        conns.push(std::thread::spawn(move || serve(stream, &i3, &s3)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(10)).expect("the fake API server started");
        FakeCluster { port, inner, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port>` (inside the namespace).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The stored NetworkPolicies, by `<namespace>/<name>`.
    pub fn policies(&self) -> BTreeMap<String, Value> {
        let g = self.inner.lock().unwrap();
        g.objects.iter().map(|((ns, n), v)| (format!("{ns}/{n}"), v.clone())).collect()
    }

    /// Delete an object out of band (as `kubectl delete` would); whether it existed.
    pub fn delete_out_of_band(&self, namespace: &str, name: &str) -> bool {
        self.inner.lock().unwrap().objects.remove(&(namespace.to_string(), name.to_string())).is_some()
    }

    /// Every request served so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Requests outside what the provider should send.
    pub fn unexpected(&self) -> Vec<String> {
        self.inner.lock().unwrap().unexpected.clone()
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn not_found(name: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("networkpolicies.networking.k8s.io \"{name}\" not found"),
               "reason": "NotFound", "details": {"name": name, "group": "networking.k8s.io", "kind": "networkpolicies"}, "code": 404}),
    )
}

fn handle(inner: &Mutex<Inner>, method: &str, target: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut g = inner.lock().unwrap();
    g.seen.push(Seen { method: method.into(), path: path.into(), query: query.into(), content_type: content_type.into() });
    let parts: Vec<&str> = path.strip_prefix(PREFIX).map(|r| r.split('/').collect()).unwrap_or_default();
    let [ns, "networkpolicies", name] = parts.as_slice() else {
        g.unexpected.push(format!("{method} {target}"));
        return (404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}));
    };
    let key = (ns.to_string(), name.to_string());
    match method {
        "GET" => match g.objects.get(&key) {
            Some(o) => (200, o.clone()),
            None => not_found(name),
        },
        "PATCH" if content_type == "application/apply-patch+yaml" => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                return (400, json!({"kind": "Status", "status": "Failure", "reason": "BadRequest", "code": 400}));
            };
            g.version += 1;
            obj["metadata"]["resourceVersion"] = json!(g.version.to_string());
            obj["metadata"]["namespace"] = json!(ns);
            g.objects.insert(key, obj.clone());
            (200, obj)
        }
        "DELETE" => match g.objects.remove(&key) {
            Some(_) => (200, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "group": "networking.k8s.io", "kind": "networkpolicies"}})),
            None => not_found(name),
        },
        _ => {
            g.unexpected.push(format!("{method} {target} ({content_type})"));
            (405, json!({"kind": "Status", "status": "Failure", "reason": "MethodNotAllowed", "code": 405}))
        }
    }
}

/// Serve HTTP/1.1 requests on one connection until it closes (keep-alive).
fn serve(stream: TcpStream, inner: &Mutex<Inner>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        let mut words = line.split_whitespace();
        let (Some(method), Some(target)) = (words.next(), words.next()) else { return };
        let (method, target) = (method.to_string(), target.to_string());
        let mut length = 0usize;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (code, value) = handle(inner, &method, &target, &content_type, &body);
        let text = value.to_string();
        let reason = match code {
            200 => "OK",
            404 => "Not Found",
            _ => "Error",
        };
        let head = format!("HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", text.len());
        if writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(text.as_bytes())).is_err() {
            return;
        }
    }
}

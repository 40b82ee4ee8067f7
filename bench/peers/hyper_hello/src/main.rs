//! The hyper peer of `bench/compare.sh`: HTTP/1.1 "hello world" on hyper 1.x
//! over tokio's multi-thread runtime with 2 worker threads (one process; the
//! uvring, nginx and Node peers run 2 worker processes), the minimal server
//! a Rust user would write.
//!
//! ```text
//! hyper_hello [--port P] [--threads N]
//! ```
//!
//! Prints `listening ADDR` once it accepts. Keep-alive is hyper's default;
//! `Connection: close` is honoured by hyper.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"hello world")));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

fn main() {
    let mut port = 0u16;
    let mut threads = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--port" => port = v.parse().expect("bad --port"),
            "--threads" => threads = v.parse().expect("bad --threads"),
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        println!("listening {}", listener.local_addr().expect("local addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(hello)).await;
            });
        }
    });
}

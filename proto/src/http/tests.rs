use std::time::Instant;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

const BOUND: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(limits: HttpLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router, limits, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn limits(header_ms: u64, max_connections: usize, max_per_source: usize) -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_millis(header_ms),
        max_connections,
        max_per_source,
    }
}

async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends one kept-alive `GET /peer` and returns the body of the answer.
async fn ask(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /peer HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .unwrap()
                .parse()
                .unwrap();
            if body.len() >= length {
                return body.to_string();
            }
        }
    }
}

/// Waits for the server to close `stream` (EOF or reset) and says how long that took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {BOUND:?}"),
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_timeout_and_others_are_served() {
    let server = start(limits(400, 16, 16)).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut other = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(ask(&mut other).await, "127.0.0.1");
    let waited = closed(&mut silent).await;
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}

#[tokio::test]
async fn headers_sent_slowly_do_not_extend_the_deadline() {
    let server = start(limits(500, 16, 16)).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    // One byte every 100 ms would take 3 s for this request line; the deadline is 0.5 s.
    for byte in b"GET /peer HTTP/1.1\r\n" {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    closed(&mut slow).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_too() {
    let server = start(limits(400, 16, 16)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(ask(&mut stream).await, "127.0.0.1");
    assert_eq!(ask(&mut stream).await, "127.0.0.1");
    let waited = closed(&mut stream).await;
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}

#[tokio::test]
async fn one_source_over_its_limit_is_closed_and_other_sources_are_not() {
    let server = start(limits(30_000, 16, 2)).await;
    let mut first = connect_from([127, 0, 0, 1], server.addr).await;
    let mut second = connect_from([127, 0, 0, 1], server.addr).await;
    // Answered, so both are counted before the third arrives.
    assert_eq!(ask(&mut first).await, "127.0.0.1");
    assert_eq!(ask(&mut second).await, "127.0.0.1");

    let mut third = connect_from([127, 0, 0, 1], server.addr).await;
    let waited = closed(&mut third).await;
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let mut elsewhere = connect_from([127, 0, 0, 2], server.addr).await;
    assert_eq!(ask(&mut elsewhere).await, "127.0.0.2");
    assert_eq!(ask(&mut first).await, "127.0.0.1");

    // A place freed is a place again (the server notices the close asynchronously).
    drop(second);
    let deadline = Instant::now() + BOUND;
    loop {
        let mut again = connect_from([127, 0, 0, 1], server.addr).await;
        let _ = again
            .write_all(b"GET /peer HTTP/1.1\r\nHost: test\r\n\r\n")
            .await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(BOUND, again.read(&mut buf)).await
            && n > 0
        {
            assert!(buf.starts_with(b"HTTP/1.1 200"));
            break;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn beyond_the_connection_limit_a_client_waits_for_a_place() {
    let server = start(limits(30_000, 1, 16)).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(ask(&mut first).await, "127.0.0.1");
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    let asked = tokio::spawn(async move { ask(&mut waiting).await });
    // Not served while the only place is taken…
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!asked.is_finished());
    // …and served once it is given back.
    drop(first);
    let answer = tokio::time::timeout(BOUND, asked).await.unwrap().unwrap();
    assert_eq!(answer, "127.0.0.1");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let mut server = start(limits(30_000, 16, 16)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(ask(&mut idle).await, "127.0.0.1");
    server.stop.take().unwrap().send(()).unwrap();
    let waited = closed(&mut idle).await;
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    tokio::time::timeout(BOUND, server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}

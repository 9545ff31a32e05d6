//! Known-good checks for the testkit backends, talking to them directly (no proxy).
#![forbid(unsafe_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use pinion_testkit::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn get(url: &str) -> Request<ReqBody> {
    Request::get(url).body(empty()).unwrap()
}

#[tokio::test]
async fn http1_backend_describes_request() {
    let b = spawn_http_backend(BackendKind::Http1);
    let c = http1_client();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/some/path?x=1&y=2", b.url()))
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header("X-Upper", "v")
        .body(full("hello"))
        .unwrap();
    let (status, headers, body) = send(&c, req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "http1");
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["backend"], "http1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/some/path?x=1&y=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["body_len"], 5);
    assert_eq!(v["headers"]["x-multi"], serde_json::json!(["a", "b"]));
    assert_eq!(v["headers"]["x-upper"], "v");
    assert_eq!(v["headers"]["host"], b.addr.to_string());
    assert_eq!(b.hit_count(), 1);
}

#[tokio::test]
async fn http2_backend_speaks_h2c_only() {
    let b = spawn_http_backend_named(BackendKind::Http2, "two");
    let r = send_full(&h2c_client(), get(&format!("{}/x", b.url())), Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.headers["x-backend"], "two");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["headers"]["host"], b.addr.to_string());
    // An HTTP/1.1 client must fail against an h2-only backend.
    let h1 = send_full(&http1_client(), get(&format!("{}/x", b.url())), Duration::from_secs(5)).await;
    assert!(h1.is_err(), "h1 request to h2-only backend succeeded: {h1:?}");
}

#[tokio::test]
async fn auto_backend_speaks_both() {
    let b = spawn_http_backend(BackendKind::Auto);
    for (c, v) in [(http1_client(), "HTTP/1.1"), (h2c_client(), "HTTP/2.0")] {
        let (s, _, body) = send(&c, get(&format!("{}/", b.url()))).await.unwrap();
        assert_eq!(s, 200);
        let j: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["version"], v);
    }
}

#[tokio::test]
async fn status_delay_close_and_trailers() {
    let b = spawn_http_backend(BackendKind::Auto);
    let c = http1_client();
    let (s, h, _) = send(&c, get(&format!("{}/status/418", b.url()))).await.unwrap();
    assert_eq!(s, 418);
    assert_eq!(h["x-backend"], "auto");
    let (s, _, body) = send(&c, get(&format!("{}/status/204", b.url()))).await.unwrap();
    assert_eq!((s.as_u16(), body.len()), (204, 0));

    let t0 = std::time::Instant::now();
    let (s, _, _) = send(&c, get(&format!("{}/delay/200", b.url()))).await.unwrap();
    assert_eq!(s, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200));

    let (s, h, _) = send(&c, get(&format!("{}/close", b.url()))).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(h["connection"], "close");

    let r = send_full(&h2c_client(), get(&format!("{}/trailers", b.url())), Duration::from_secs(5)).await.unwrap();
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(r.trailers.expect("trailers")["x-trailer"], "yes");
}

#[tokio::test]
async fn bytes_stream_in_chunks() {
    let b = spawn_http_backend(BackendKind::Http2);
    let n: usize = 8 << 20;
    let resp = h2c_client().request(get(&format!("{}/bytes/{n}", b.url()))).await.unwrap();
    assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
    let mut body = resp.into_body();
    let (mut total, mut frames, mut biggest) = (0usize, 0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Some(f) = tokio::time::timeout_at(deadline, body.frame()).await.unwrap() {
        if let Ok(d) = f.unwrap().into_data() {
            total += d.len();
            biggest = biggest.max(d.len());
            frames += 1;
        }
    }
    assert_eq!(total, n);
    assert!(frames > 1 && biggest <= 64 * 1024, "frames={frames} biggest={biggest}");
}

#[tokio::test]
async fn echo_streams_large_upload() {
    let b = spawn_http_backend(BackendKind::Http1);
    // 4 MiB sent as a stream of 64 KiB chunks; the echo must return the same bytes.
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, BoxError>> =
        (0..64u8).map(|i| Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![i; 64 * 1024])))).collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post(format!("{}/echo", b.url())).body(BodyExt::boxed(body)).unwrap();
    let r = send_full(&http1_client(), req, Duration::from_secs(20)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 64 * 64 * 1024);
    assert!(r.body.chunks(64 * 1024).enumerate().all(|(i, c)| c.iter().all(|&x| x == i as u8)));
}

#[tokio::test]
async fn websocket_echo() {
    let b = spawn_http_backend(BackendKind::Http1);
    let (mut ws, resp) =
        tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(format!("ws://{}/ws", b.addr)))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-backend"], "http1");
    ws.send(Message::text("hello")).await.unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let m1 = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    let m2 = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(m1, Message::text("hello"));
    assert_eq!(m2, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn grpc_unary_and_bidi() {
    let g = spawn_grpc_backend();
    let r = grpc_unary(&g.addr.to_string()).await.unwrap();
    assert_eq!(r.code, tonic::Code::Ok, "{r:?}");
    assert_eq!(r.echoed_path.as_deref(), Some("/grpc-unary-probe"));
    assert_eq!(r.echoed_header.as_deref(), Some("hello"));
    assert_eq!(r.metadata["x-backend"], "grpc");

    let r = grpc_bidi_echo(&g.url(), 5).await.unwrap();
    assert!(r.echoed_all(5), "{r:?}");
    assert_eq!(g.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn grpc_to_closed_port_is_an_error() {
    let port = free_port();
    assert!(grpc_unary(&format!("127.0.0.1:{port}")).await.is_err());
}

#[test]
fn backend_works_without_a_runtime_and_shuts_down() {
    let b = spawn_http_backend(BackendKind::Http1);
    let (code, body) = http_get_blocking(b.addr, "/status/201", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 201);
    assert!(body.contains("\"backend\":\"http1\""));
    let addr = b.addr;
    b.shutdown();
    assert!(http_get_blocking(addr, "/", Duration::from_secs(1)).is_err());
}

//! End-to-end tests of the simulated stamp: real listeners on 127.0.0.1:0,
//! a real hyper client, every endpoint and every fault.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use stampgate::stamp::{
    self, Fault, HealthFault, SERVER_LOCATION_HEADER, SERVER_NAME_HEADER, Stamp, StampOptions,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const ITEMS: &str = "/catalogservice/api/1.0/catalogitem";

/// Long enough that a request which does answer would have answered.
const NO_ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// A bound for things that must happen, so a broken stamp fails the test
/// instead of hanging it.
const MUST_HAPPEN_WITHIN: Duration = Duration::from_secs(10);

type RequestBody = UnsyncBoxBody<Bytes, Infallible>;

/// A small HTTP client bound to one address.
struct Http {
    client: Client<HttpConnector, RequestBody>,
    base: String,
}

/// A response with its body read.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// The error message of a `{"error": ...}` body.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("an error message")
            .to_owned()
    }
}

impl Http {
    fn h1(addr: SocketAddr) -> Http {
        Http::with(addr, Client::builder(TokioExecutor::new()).build_http())
    }

    /// HTTP/2 with prior knowledge (h2c), no upgrade dance.
    fn h2(addr: SocketAddr) -> Http {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        Http::with(addr, client)
    }

    fn with(addr: SocketAddr, client: Client<HttpConnector, RequestBody>) -> Http {
        Http {
            client,
            base: format!("http://{addr}"),
        }
    }

    fn request(&self, method: Method, path: &str, body: RequestBody) -> Request<RequestBody> {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .body(body)
            .unwrap()
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, "").await
    }

    async fn send(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Answer {
        let body = Full::new(body.into()).boxed_unsync();
        self.call(self.request(method, path, body)).await
    }

    async fn call(&self, request: Request<RequestBody>) -> Answer {
        let response = timeout(MUST_HAPPEN_WITHIN, self.client.request(request))
            .await
            .expect("the stamp answers in time")
            .expect("the request succeeds");
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

async fn start(name: &str, region: &str) -> Stamp {
    Stamp::start(StampOptions::loopback(name, region))
        .await
        .unwrap()
}

fn assert_labelled(answer: &Answer, stamp: &Stamp) {
    assert_eq!(answer.header(SERVER_NAME_HEADER), stamp.name());
    assert_eq!(answer.header(SERVER_LOCATION_HEADER), stamp.region());
}

async fn first_item_id(http: &Http) -> String {
    let list = http.get(&format!("{ITEMS}?limit=1")).await.json();
    list[0]["id"].as_str().unwrap().to_owned()
}

async fn connect_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
    }
}

// ---- endpoints -------------------------------------------------------------

#[tokio::test]
async fn lists_items_with_a_limit() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());

    let default = http.get(ITEMS).await;
    assert_eq!(default.status, StatusCode::OK);
    assert_eq!(default.header("content-type"), "application/json");
    let items = default.json();
    assert_eq!(items.as_array().unwrap().len(), 10);
    for field in ["id", "name", "description", "price", "imageUrl"] {
        assert!(
            !items[0][field].is_null(),
            "item lacks {field}: {}",
            items[0]
        );
    }

    let three = http.get(&format!("{ITEMS}?limit=3")).await.json();
    assert_eq!(three.as_array().unwrap().len(), 3);
    assert_eq!(three[0], items[0], "the catalog is deterministic");
    let capped = http.get(&format!("{ITEMS}?limit=1000")).await.json();
    assert_eq!(capped.as_array().unwrap().len(), stamp::ITEM_COUNT);

    let bad = http.get(&format!("{ITEMS}?limit=many")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.error().contains("limit"), "{}", bad.error());
}

#[tokio::test]
async fn every_stamp_serves_the_same_catalog() {
    let west = start("we-1", "westeurope").await;
    let east = start("eus2-1", "eastus2").await;
    let from_west = Http::h1(west.addr()).get(ITEMS).await;
    let from_east = Http::h1(east.addr()).get(ITEMS).await;
    assert_eq!(from_west.body, from_east.body);
    assert_labelled(&from_west, &west);
    assert_labelled(&from_east, &east);
}

#[tokio::test]
async fn gets_an_item_its_comments_and_ratings() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let id = first_item_id(&http).await;

    let item = http.get(&format!("{ITEMS}/{id}")).await;
    assert_eq!(item.status, StatusCode::OK);
    assert_eq!(item.json()["id"], id.as_str());

    for list in ["comments", "ratings"] {
        let answer = http.get(&format!("{ITEMS}/{id}/{list}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{list}");
        let entries = answer.json();
        let entries = entries.as_array().unwrap();
        assert!(!entries.is_empty(), "{list}");
        assert!(entries.iter().all(|e| e["catalogItemId"] == id.as_str()));
    }

    let missing = http.get(&format!("{ITEMS}/no-such-id")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.error().contains("no-such-id"));
    let missing = http.get(&format!("{ITEMS}/no-such-id/comments")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn posts_are_accepted_with_a_new_id_each_time() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let id = first_item_id(&http).await;
    let big = vec![b'x'; 300 * 1024];

    let first = http
        .send(Method::POST, &format!("{ITEMS}/{id}/comments"), big.clone())
        .await;
    let second = http
        .send(Method::POST, &format!("{ITEMS}/{id}/comments"), big)
        .await;
    let rating = http
        .send(
            Method::POST,
            &format!("{ITEMS}/{id}/ratings"),
            r#"{"rating":4}"#,
        )
        .await;

    for answer in [&first, &second, &rating] {
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        assert_labelled(answer, &stamp);
    }
    assert_eq!(first.json()["received_bytes"], 300 * 1024);
    assert_eq!(rating.json()["received_bytes"], 12);
    let ids = [&first, &second, &rating].map(|a| a.json()["id"].as_str().unwrap().to_owned());
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );

    let unknown = http
        .send(Method::POST, &format!("{ITEMS}/nope/ratings"), "{}")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn echo_streams_a_large_body_back_unchanged() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let chunk = Bytes::from((0..=255u8).cycle().take(64 * 1024).collect::<Vec<u8>>());
    let chunks = 256; // 16 MiB
    let frames = futures_util::stream::iter(
        std::iter::repeat_n(chunk.clone(), chunks).map(|c| Ok::<_, Infallible>(Frame::data(c))),
    );
    let request = http.request(
        Method::PUT,
        "/catalogservice/api/1.0/echo",
        StreamBody::new(frames).boxed_unsync(),
    );
    let response = http.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut offset = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for (i, &byte) in data.iter().enumerate() {
            assert_eq!(
                byte,
                chunk[(offset + i) % chunk.len()],
                "byte {}",
                offset + i
            );
        }
        offset += data.len();
    }
    assert_eq!(offset, chunks * chunk.len());
}

#[tokio::test]
async fn echo_answers_before_the_request_body_ends() {
    // Full duplex: the first chunk comes back while the client still holds
    // the second, which shows the stamp streams instead of buffering.
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let request = http.request(
        Method::POST,
        "/catalogservice/api/1.0/echo",
        StreamBody::new(frames).boxed_unsync(),
    );
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let response = timeout(MUST_HAPPEN_WITHIN, http.client.request(request))
        .await
        .expect("response head before the body ends")
        .unwrap();
    let mut body = response.into_body();
    let first = timeout(MUST_HAPPEN_WITHIN, body.frame()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first");
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn blob_streams_the_requested_bytes() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let len = 5 * stamp::BLOB_CHUNK_SIZE + 123;
    let blob = http
        .get(&format!("/catalogservice/api/1.0/blob?bytes={len}"))
        .await;
    assert_eq!(blob.status, StatusCode::OK);
    assert_eq!(blob.header(CONTENT_LENGTH.as_str()), len.to_string());
    assert_eq!(blob.body.len(), len);
    let intact = blob
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == stamp::blob_byte(i as u64));
    assert!(intact);

    let missing = http.get("/catalogservice/api/1.0/blob").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn headers_endpoint_echoes_the_request_head() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let mut request = http.request(
        Method::DELETE,
        "/catalogservice/api/1.0/headers?x=1",
        Empty::new().boxed_unsync(),
    );
    let headers = request.headers_mut();
    headers.append("x-test", "one".parse().unwrap());
    headers.append("x-test", "two".parse().unwrap());
    headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
    let answer = http.call(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    let head = answer.json();
    assert_eq!(head["method"], "DELETE");
    assert_eq!(head["uri"], "/catalogservice/api/1.0/headers?x=1");
    assert_eq!(head["version"], "HTTP/1.1");
    assert_eq!(head["headers"]["x-test"], "one, two");
    assert_eq!(head["headers"]["content-type"], "text/plain");
    assert_eq!(head["headers"]["host"], stamp.addr().to_string().as_str());
}

#[tokio::test]
async fn health_and_liveness_answer() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());

    let health = http.get(stamp::HEALTH_PATH).await;
    assert_eq!(health.status, StatusCode::OK);
    let report = health.json();
    assert_eq!(report["status"], "Healthy");
    assert!(report["lastExecution"].is_string());
    let components: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["component"].as_str().unwrap())
        .collect();
    assert_eq!(
        components,
        ["database", "messaging", "statefile", "monitoring"]
    );

    let head = http.send(Method::HEAD, stamp::HEALTH_PATH, "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());

    let live = http.get(stamp::LIVENESS_PATH).await;
    assert_eq!(live.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let unknown = http.get("/nowhere").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.error().contains("/nowhere"));
    let wrong = http.send(Method::DELETE, ITEMS, "").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "GET");
}

#[tokio::test]
async fn every_answer_names_the_stamp_and_region() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let id = first_item_id(&http).await;
    let mut answers = vec![
        http.get(ITEMS).await,
        http.get(&format!("{ITEMS}/{id}/ratings")).await,
        http.send(Method::POST, &format!("{ITEMS}/{id}/comments"), "hi")
            .await,
        http.send(Method::POST, "/catalogservice/api/1.0/echo", "hi")
            .await,
        http.get("/catalogservice/api/1.0/blob?bytes=10").await,
        http.get("/catalogservice/api/1.0/headers").await,
        http.get("/nowhere").await,
        http.send(Method::PUT, ITEMS, "").await,
        http.get(stamp::HEALTH_PATH).await,
        http.send(Method::HEAD, stamp::HEALTH_PATH, "").await,
        http.get(stamp::LIVENESS_PATH).await,
    ];
    stamp.set_fault(Fault {
        health: Some(HealthFault::Fail),
        error_rate: Some(1.0),
        ..Fault::default()
    });
    answers.push(http.get(ITEMS).await);
    answers.push(http.get(stamp::HEALTH_PATH).await);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [
            200, 200, 202, 200, 200, 200, 404, 405, 200, 200, 200, 500, 503
        ]
    );
    for answer in &answers {
        assert_labelled(answer, &stamp);
    }
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h2(stamp.addr());
    let list = http.get(ITEMS).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.version, Version::HTTP_2);
    assert_labelled(&list, &stamp);
    let head = http.get("/catalogservice/api/1.0/headers").await.json();
    assert_eq!(head["version"], "HTTP/2.0");
    let echoed = http
        .send(Method::POST, "/catalogservice/api/1.0/echo", "over h2")
        .await;
    assert_eq!(echoed.body, "over h2");
    let health_head = http.send(Method::HEAD, stamp::HEALTH_PATH, "").await;
    assert_eq!(health_head.status, StatusCode::OK);
    assert!(health_head.body.is_empty());
}

#[tokio::test]
async fn counts_api_requests_but_not_health() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    http.get(ITEMS).await;
    http.get("/catalogservice/api/1.0/nothing-here").await;
    http.get(stamp::HEALTH_PATH).await;
    http.get(stamp::LIVENESS_PATH).await;
    http.get("/nowhere").await;
    assert_eq!(stamp.requests_served(), 2);
    assert_eq!(stamp.requests_received(), 2);
    let stats = Http::h1(stamp.control_addr()).get("/stats").await.json();
    assert_eq!(stats, json!({ "requests": 2, "received": 2 }));
}

#[tokio::test]
async fn an_api_hang_is_received_but_not_served_and_spares_health() {
    let stamp = start("we-1", "westeurope").await;
    stamp.set_fault(Fault {
        hang: Some(true),
        scope: Some(stampgate::stamp::FaultScope::Api),
        ..Fault::default()
    });
    let http = Http::h1(stamp.addr());
    let health = http.get(stamp::HEALTH_PATH).await;
    assert_eq!(health.status, StatusCode::OK, "health stays green");
    let held = tokio::spawn({
        let http = Http::h1(stamp.addr());
        async move { http.get(ITEMS).await }
    });
    // Polled, not slept on: the counter moves when the request arrives.
    timeout(Duration::from_secs(5), async {
        while stamp.requests_received() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the API request is received");
    assert!(!held.is_finished());
    assert_eq!(stamp.requests_served(), 0);
    stamp.clear_fault();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(stamp.requests_served(), 1);
}

// ---- faults ----------------------------------------------------------------

#[tokio::test]
async fn health_fault_fails_the_health_endpoint_only() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    stamp.set_fault(Fault {
        health: Some(HealthFault::Fail),
        ..Fault::default()
    });

    let health = http.get(stamp::HEALTH_PATH).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    let report = health.json();
    assert_eq!(report["status"], "Unhealthy");
    let failing: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "Healthy")
        .collect();
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0]["component"], "statefile");
    let head = http.send(Method::HEAD, stamp::HEALTH_PATH, "").await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);

    assert_eq!(http.get(ITEMS).await.status, StatusCode::OK);
    assert_eq!(http.get(stamp::LIVENESS_PATH).await.status, StatusCode::OK);

    stamp.set_fault(Fault {
        health: Some(HealthFault::Ok),
        ..Fault::default()
    });
    assert_eq!(http.get(stamp::HEALTH_PATH).await.status, StatusCode::OK);
}

#[tokio::test]
async fn error_rate_one_fails_every_api_request_but_not_health() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    stamp.set_fault(Fault {
        error_rate: Some(1.0),
        ..Fault::default()
    });
    for _ in 0..20 {
        let answer = http.get(ITEMS).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(answer.error().contains("error_rate"));
    }
    assert_eq!(http.get(stamp::HEALTH_PATH).await.status, StatusCode::OK);
    assert_eq!(http.get(stamp::LIVENESS_PATH).await.status, StatusCode::OK);
    assert_eq!(
        stamp.requests_served(),
        20,
        "injected errors are answers too"
    );
}

#[tokio::test]
async fn error_rate_half_fails_about_half() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    stamp.set_fault(Fault {
        error_rate: Some(0.5),
        ..Fault::default()
    });
    let mut failed = 0;
    for _ in 0..200 {
        if http.get(ITEMS).await.status == StatusCode::INTERNAL_SERVER_ERROR {
            failed += 1;
        }
    }
    // Binomial(200, 0.5): mean 100, sd about 7; 60..=140 is beyond 5 sd.
    assert!((60..=140).contains(&failed), "{failed} of 200 failed");
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    let latency = Duration::from_millis(150);
    stamp.set_fault(Fault {
        latency_ms: Some(150),
        ..Fault::default()
    });
    for path in [ITEMS, stamp::HEALTH_PATH, "/nowhere"] {
        let started = Instant::now();
        http.get(path).await;
        assert!(started.elapsed() >= latency, "{path} answered early");
    }
}

#[tokio::test]
async fn hang_holds_requests_until_cleared() {
    let stamp = start("we-1", "westeurope").await;
    let http = Http::h1(stamp.addr());
    stamp.set_fault(Fault {
        hang: Some(true),
        ..Fault::default()
    });
    let mut pending = tokio::spawn(async move { http.get(ITEMS).await });
    assert!(
        timeout(NO_ANSWER_WITHIN, &mut pending).await.is_err(),
        "a hung stamp answered"
    );
    assert_eq!(stamp.requests_served(), 0);

    stamp.clear_fault();
    let answer = timeout(MUST_HAPPEN_WITHIN, pending).await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(stamp.requests_served(), 1);
}

#[tokio::test]
async fn down_refuses_connections_drops_open_ones_and_recovers_on_the_same_port() {
    let stamp = start("we-1", "westeurope").await;
    let addr = stamp.addr();

    // An open keep-alive connection, known to be accepted (it has been
    // answered once), with a second request in flight, held by hang.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let get_items = || {
        Request::get(ITEMS)
            .header("host", addr.to_string())
            .body(Empty::new())
            .unwrap()
    };
    let first = sender.send_request(get_items()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.unwrap();
    stamp.set_fault(Fault {
        hang: Some(true),
        ..Fault::default()
    });
    let in_flight = tokio::spawn(sender.send_request(get_items()));

    stamp.set_fault(Fault {
        down: Some(true),
        ..Fault::default()
    });
    stamp.settled().await;
    assert!(
        connect_refused(addr).await,
        "a down stamp accepted a connection"
    );
    let dropped = timeout(MUST_HAPPEN_WITHIN, in_flight).await.unwrap();
    assert!(
        dropped.unwrap().is_err(),
        "the in-flight request was answered"
    );
    let closed = timeout(MUST_HAPPEN_WITHIN, connection).await;
    assert!(closed.is_ok(), "the open connection was not dropped");

    stamp.clear_fault();
    stamp.settled().await;
    assert_eq!(stamp.addr(), addr);
    let answer = Http::h1(addr).get(ITEMS).await;
    assert_eq!(answer.status, StatusCode::OK);
}

// ---- control listener ------------------------------------------------------

#[tokio::test]
async fn control_sets_merges_shows_and_clears_faults() {
    let stamp = start("we-1", "westeurope").await;
    let control = Http::h1(stamp.control_addr());

    let set = control
        .send(Method::PUT, "/fault", r#"{"health":"fail","latency_ms":5}"#)
        .await;
    assert_eq!(set.status, StatusCode::OK);
    let merged = control
        .send(Method::PUT, "/fault", r#"{"error_rate":0.25}"#)
        .await;
    assert_eq!(
        merged.json(),
        json!({"health": "fail", "latency_ms": 5, "error_rate": 0.25})
    );
    assert_eq!(control.get("/fault").await.json(), merged.json());
    assert_eq!(
        stamp.fault(),
        Fault {
            health: Some(HealthFault::Fail),
            error_rate: Some(0.25),
            latency_ms: Some(5),
            ..Fault::default()
        }
    );

    let cleared = control.send(Method::DELETE, "/fault", "").await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert_eq!(cleared.json(), json!({}));
    assert_eq!(stamp.fault(), Fault::default());
}

#[tokio::test]
async fn control_down_and_delete_take_effect_before_the_answer() {
    let stamp = start("we-1", "westeurope").await;
    let control = Http::h1(stamp.control_addr());
    let down = control
        .send(Method::PUT, "/fault", r#"{"down":true}"#)
        .await;
    assert_eq!(down.status, StatusCode::OK);
    assert!(connect_refused(stamp.addr()).await);

    let up = control.send(Method::DELETE, "/fault", "").await;
    assert_eq!(up.status, StatusCode::OK);
    assert_eq!(
        Http::h1(stamp.addr()).get(ITEMS).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn control_refuses_bad_faults_naming_the_problem() {
    let stamp = start("we-1", "westeurope").await;
    let control = Http::h1(stamp.control_addr());
    let cases = [
        ("not json", "not valid JSON"),
        (r#"{"health":"broken"}"#, "broken"),
        (r#"{"health":"broken"}"#, "health"),
        (r#"{"error_rate":1.5}"#, "error_rate"),
        (r#"{"error_rate":1.5}"#, "1.5"),
        (r#"{"latency_ms":"slow"}"#, "latency_ms"),
        (r#"{"flaky":true}"#, "flaky"),
        (r#"[]"#, "JSON object"),
    ];
    for (body, expected) in cases {
        let answer = control.send(Method::PUT, "/fault", body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        let message = answer.error();
        assert!(message.contains(expected), "{body}: {message}");
    }
    assert_eq!(
        stamp.fault(),
        Fault::default(),
        "a refused fault changes nothing"
    );
}

#[tokio::test]
async fn control_answers_404_and_405() {
    let stamp = start("we-1", "westeurope").await;
    let control = Http::h1(stamp.control_addr());
    assert_eq!(control.get("/nope").await.status, StatusCode::NOT_FOUND);
    let wrong = control.send(Method::POST, "/fault", "{}").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "GET, PUT, DELETE");
}

// ---- life cycle -----------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_both_listeners() {
    let stamp = start("we-1", "westeurope").await;
    let (addr, control_addr) = (stamp.addr(), stamp.control_addr());
    stamp.shutdown().await;
    assert!(connect_refused(addr).await);
    assert!(connect_refused(control_addr).await);
}

#[tokio::test]
async fn start_refuses_a_taken_address_and_a_bad_name() {
    let stamp = start("we-1", "westeurope").await;
    let mut taken = StampOptions::loopback("we-2", "westeurope");
    taken.listen = stamp.addr();
    let err = Stamp::start(taken).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);

    let bad = StampOptions::loopback("we\n1", "westeurope");
    let err = Stamp::start(bad).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(stamp::run(
        StampOptions::loopback("we-1", "westeurope"),
        async {
            stopped.await.ok();
        },
    ));
    stop.send(()).unwrap();
    timeout(MUST_HAPPEN_WITHIN, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

//! A DNS client for the tests of the authoritative DNS server: queries
//! written and read with hickory-proto's messages over a real UDP socket.
//! Shared by the DNS tests and the fleet's (answers of kind "edges").

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

/// How long one answer may take before the test fails.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// A query for `name`, type `rtype`, with a random id.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

/// Send `m` over UDP and read the answer (same id), or fail after
/// [`ANSWER_WAIT`].
pub async fn udp(server: SocketAddr, m: &Message) -> Message {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.send_to(&m.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(ANSWER_WAIT, socket.recv(&mut buf))
        .await
        .expect("a UDP answer in time")
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, m.metadata.id);
    answer
}

/// The addresses of the answer section.
pub fn addresses(m: &Message) -> BTreeSet<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

/// 127.0.0.`last`: tests give stamps and edges distinct loopback addresses
/// so that answers tell them apart.
pub fn ip(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

/// The set of 127.0.0.x for each x.
pub fn ips(lasts: &[u8]) -> BTreeSet<IpAddr> {
    lasts.iter().map(|&l| ip(l)).collect()
}

/// The A answer for `name` from `server`, which must be NOERROR and
/// authoritative.
pub async fn a_records(server: SocketAddr, name: &str) -> BTreeSet<IpAddr> {
    let answer = udp(server, &query(name, RecordType::A)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative, "AA bit");
    addresses(&answer)
}

/// Ask `server` until the A answer for `name` is `expected`, or fail after
/// `within`, naming the last answer.
pub async fn await_a_records(
    server: SocketAddr,
    name: &str,
    expected: BTreeSet<IpAddr>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = a_records(server, name).await;
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{server} answers {got:?} for {name}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

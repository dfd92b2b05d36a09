//! The UDP front of the DNS server: each datagram is read, answered and
//! sent before the next one is read, on one of the DNS server's threads.
//!
//! hickory-server's UDP loop spawns a task per datagram and hands each
//! response back through a channel to the loop, which sends only when it
//! next runs: under a burst it first reads up to a whole coop budget of
//! queries (128), then answers them, then sends. The first query of a
//! burst thus waited for 127 others, a large part of the p99 at 50,000
//! queries/s (bench/RESULTS.md, "Its own thread, UDP answered inline").
//! Answering inline keeps each query's latency to its own work plus the
//! queue ahead of it.
//!
//! What is DNS here is still hickory's: [`Request::from_bytes`] parses,
//! the handler's `decide` (which hickory's TCP listener reaches through
//! `RequestHandler`) chooses the answer, and
//! [`MessageResponse::destructive_emit`] writes it with the client's
//! payload size as the limit, so truncation (TC) and EDNS behave as over
//! hickory's own loop. TCP stays on hickory's listener. Before any of
//! that, the rate limit has its say and the packet cache
//! (`super::packet_cache`) answers a repeat from a response written
//! earlier.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::handler::{HEADER_LEN, Handler, Reuse};
use super::packet_cache::PacketCache;
use super::rate_limit::Verdict;

/// Largest query read. Queries are a header and one question, well under
/// this; a longer datagram is cut here and then fails to parse (FORMERR).
/// hickory's own loop reads the same 4 KiB.
const RECEIVE_BUFFER: usize = 4096;
/// Without EDNS a client takes 512 bytes over UDP (RFC 1035 4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// Answer queries on `socket` until `shutdown`.
pub(super) async fn serve(socket: UdpSocket, handler: Arc<Handler>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let mut out = Vec::with_capacity(512);
    let mut cache = PacketCache::new();
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, src) = match received {
            Ok(received) => received,
            // The socket itself is gone: nothing more will arrive.
            Err(e) if matches!(e.kind(), io::ErrorKind::NotConnected) => {
                tracing::error!(error = %e, "dns: the UDP socket failed; UDP answering stopped");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns: UDP receive failed");
                continue;
            }
        };
        let datagram = &buf[..len];
        // Shorter than a header: there is no ID to answer to. A response:
        // dropped, so that two servers cannot be made to answer each
        // other forever.
        if !can_answer(src) || len < HEADER_LEN || datagram[2] & 0x80 != 0 {
            continue;
        }
        match handler.limit(src.ip()) {
            Verdict::Drop => continue,
            Verdict::Answer if cache.answer(&handler, datagram, &mut out) => {}
            verdict => {
                let order = cache.wanted_order();
                if let Some(reuse) = uncached(&handler, datagram, src, verdict, order, &mut out) {
                    cache.keep(datagram, reuse, &out);
                }
            }
        }
        if !out.is_empty() {
            send(&socket, &out, src).await;
        }
    }
}

/// A source a response could never reach, or that would turn the server
/// into a reflector towards a whole network: port 0, unspecified and
/// broadcast addresses. (The same rule as hickory's loop.)
fn can_answer(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_broadcast(),
            IpAddr::V6(ip) => !ip.is_unspecified(),
        }
}

/// Parse one query (a header at least, not a response) and write its
/// response into `out`, empty when nothing is to be sent, its addresses in
/// `order` when the packet cache drew one. A header but no parsable
/// message: FORMERR. Returns how the response may be kept by the packet
/// cache, when it may.
pub(super) fn uncached(
    handler: &Handler,
    datagram: &[u8],
    src: SocketAddr,
    verdict: Verdict,
    order: Option<&[u16]>,
    out: &mut Vec<u8>,
) -> Option<Reuse> {
    out.clear();
    let request = match Request::from_bytes(datagram.to_vec(), src, Protocol::Udp) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%src, %error, "dns: malformed query");
            handler.count_malformed();
            let header = Header::read(&mut BinDecoder::new(datagram)).ok()?;
            if verdict != Verdict::Answer {
                return None;
            }
            // An empty question section (hickory offers no other public
            // way to make one).
            let queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            encode(response, out);
            return None;
        }
    };
    let reply = handler.decide(&request, verdict, order)?;
    let written = encode(reply.build(&request.queries), out);
    reply.reuse.filter(|_| written)
}

/// Write `response` into `out` with the client's UDP payload size as the
/// limit: records that do not fit are left out and TC is set, so the
/// client asks again over TCP. A response hickory cannot write becomes a
/// bare SERVFAIL; returns whether hickory wrote the response itself.
fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    out: &mut Vec<u8>,
) -> bool {
    let id = response.metadata().id;
    let limit = response
        .edns()
        .map_or(PLAIN_UDP_PAYLOAD, |edns| edns.max_payload());
    out.clear();
    let mut encoder = BinEncoder::new(out);
    encoder.set_max_size(limit);
    match response.destructive_emit(&mut encoder) {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(%error, "dns: cannot encode a response; answering SERVFAIL");
            out.clear();
            if servfail(id, out).is_err() {
                out.clear();
            }
            false
        }
    }
}

/// Send one response. The socket buffer almost always has room; waiting
/// for it only when full keeps the common case one system call.
async fn send(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    let sent = match socket.try_send_to(bytes, dst) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, dst).await,
        sent => sent,
    };
    if let Err(error) = sent {
        tracing::debug!(%error, %dst, "dns: cannot send a response");
    }
}

/// A bare SERVFAIL for a response hickory could not write: better than
/// silence, which the client would retry until it gives up.
fn servfail(id: u16, bytes: &mut Vec<u8>) -> Result<ResponseInfo, ProtoError> {
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut encoder = BinEncoder::new(bytes);
    encoder.set_max_size(PLAIN_UDP_PAYLOAD);
    header.emit(&mut encoder)?;
    Ok(ResponseInfo::from(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_a_response_cannot_reach_are_not_answered() {
        assert!(can_answer("127.0.0.1:5353".parse().unwrap()));
        assert!(can_answer("[::1]:5353".parse().unwrap()));
        assert!(!can_answer("127.0.0.1:0".parse().unwrap()));
        assert!(!can_answer("0.0.0.0:5353".parse().unwrap()));
        assert!(!can_answer("255.255.255.255:5353".parse().unwrap()));
        assert!(!can_answer("[::]:5353".parse().unwrap()));
    }
}

//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary), read first
//! on a client connection when `proxy.proxy_protocol` is on: a load
//! balancer in front of us names the client's address there, and that
//! address, not the balancer's, goes into `X-Forwarded-For` and the access
//! log. On a TLS listener the header comes before the handshake.
//!
//! Parsed here rather than with a crate: the part we need (the source
//! address; TLVs are skipped) is small, it must be strict (a connection
//! without a valid header is closed), and reading it must never take a
//! byte of what follows, which decides how it reads.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// v2's 12-byte signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The spec's longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// Fewer bytes than the shortest header of either version (v1
/// `PROXY UNKNOWN\r\n` is 15, v2 is at least 16): always safe to read
/// before knowing which one it is.
const PREFIX: usize = 8;
/// Longest v2 address block we accept: the addresses plus room for the
/// TLVs load balancers add (AWS, GCP and Azure add well under this).
const V2_MAX_LEN: usize = 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection closed or failed before a header was read.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY header (or an invalid one).
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

fn invalid<T>(why: &'static str) -> Result<T, ProxyHeaderError> {
    Err(ProxyHeaderError::Invalid(why))
}

/// Read one PROXY header (v1 or v2) from `io`, taking exactly its bytes.
/// `Ok(Some(addr))` is the client's address; `Ok(None)` means the header
/// names none (v2 `LOCAL`, a health check by the balancer itself; v1
/// `UNKNOWN`; v2 `UNSPEC` or a non-IP family): the peer's address stands.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 16];
    io.read_exact(&mut head[..PREFIX]).await?;
    if head[..PREFIX] == V2_SIGNATURE[..PREFIX] {
        io.read_exact(&mut head[PREFIX..]).await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > V2_MAX_LEN {
            return invalid("v2 address block too long");
        }
        let mut rest = vec![0u8; len];
        io.read_exact(&mut rest).await?;
        return parse_v2(&head, &rest);
    }
    if &head[..6] != b"PROXY " {
        return invalid("neither a v1 nor a v2 signature");
    }
    // v1 ends at CRLF and says nothing of its length: read a byte at a
    // time so that no byte of the request behind it is taken (a v1
    // header is at most 107 bytes, once per connection).
    let mut line = head[..PREFIX].to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return invalid("v1 line longer than 107 bytes");
        }
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        line.push(b[0]);
    }
    parse_v1(&line)
}

/// A whole v1 line, `PROXY TCP4 src dst sport dport\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let Some(text) = line.strip_suffix(b"\r\n") else {
        return invalid("v1 line does not end in CRLF");
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return invalid("v1 line is not ASCII");
    };
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return invalid("v1 line does not start with PROXY");
    }
    let family = parts.next();
    if family == Some("UNKNOWN") {
        // The rest of the line is to be ignored (spec 2.1).
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return invalid("v1 line needs four fields after the family");
    };
    let ip: IpAddr = match family {
        Some("TCP4") => match src.parse::<Ipv4Addr>() {
            Ok(ip) => ip.into(),
            Err(_) => return invalid("v1 TCP4 source is not an IPv4 address"),
        },
        Some("TCP6") => match src.parse::<Ipv6Addr>() {
            Ok(ip) => ip.into(),
            Err(_) => return invalid("v1 TCP6 source is not an IPv6 address"),
        },
        _ => return invalid("v1 family is not TCP4, TCP6 or UNKNOWN"),
    };
    // No sign, no leading zeros: the spec's port is a plain decimal.
    let port = match sport.parse::<u16>() {
        Ok(p) if !sport.starts_with(['0', '+']) || sport == "0" => p,
        _ => return invalid("v1 source port is not a port number"),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// A v2 header: its fixed 16 bytes and the `len` bytes after them.
pub fn parse_v2(head: &[u8; 16], rest: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    if head[..12] != V2_SIGNATURE {
        return invalid("v2 signature");
    }
    if head[12] >> 4 != 2 {
        return invalid("v2 version is not 2");
    }
    match head[12] & 0x0f {
        // LOCAL: the balancer's own connection (its health check).
        0 => return Ok(None),
        1 => {}
        _ => return invalid("v2 command is neither LOCAL nor PROXY"),
    }
    // Family in the high nibble; the transport (stream or datagram) is
    // not ours to judge: the connection is TCP either way.
    let addr = match head[13] >> 4 {
        0x1 => {
            let Some(a) = rest.get(..12) else {
                return invalid("v2 IPv4 address block shorter than 12 bytes");
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        0x2 => {
            let Some(a) = rest.get(..36) else {
                return invalid("v2 IPv6 address block shorter than 36 bytes");
            };
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        // UNSPEC or a Unix socket: no IP address to pass on.
        0x0 | 0x3 => None,
        _ => return invalid("v2 address family unknown"),
    };
    // What follows the addresses are TLVs (ALPN, authority, cloud
    // provider ids): skipped, they were read with the block.
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut io = bytes;
        let got = read_header(&mut io).await;
        (got, io.to_vec())
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_give_the_source_and_leave_the_request() {
        let (got, left) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(got.unwrap(), Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(left, b"GET / HTTP/1.1\r\n");
        let (got, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n").await;
        assert_eq!(got.unwrap(), Some("[2001:db8::1]:4000".parse().unwrap()));
    }

    #[tokio::test]
    async fn v1_unknown_keeps_the_peer() {
        let (got, left) = read(b"PROXY UNKNOWN\r\nx").await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(left, b"x");
        let (got, _) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await;
        assert_eq!(got.unwrap(), None);
    }

    #[tokio::test]
    async fn v1_bad_lines_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        ] {
            assert!(
                read(bad).await.0.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(read(long.as_bytes()).await.0.is_err(), "over 107 bytes");
    }

    #[tokio::test]
    async fn v2_ipv4_and_ipv6_with_tlvs_skipped() {
        let mut block = vec![198, 51, 100, 9, 10, 0, 0, 1];
        block.extend_from_slice(&40000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        // Two TLVs: ALPN "h2" and an AWS VPC endpoint id.
        block.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0xEA, 0, 3, 1, b'v', b'p']);
        let mut bytes = v2(1, 0x11, &block);
        bytes.extend_from_slice(b"GET");
        let (got, left) = read(&bytes).await;
        assert_eq!(got.unwrap(), Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(left, b"GET", "TLVs read with the block, request untouched");

        let mut block = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        block.extend_from_slice(&[0; 16]);
        block.extend_from_slice(&8443u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let (got, _) = read(&v2(1, 0x21, &block)).await;
        assert_eq!(got.unwrap(), Some("[2001:db8::7]:8443".parse().unwrap()));
    }

    #[tokio::test]
    async fn v2_local_and_unspec_keep_the_peer() {
        let (got, left) = read(&[v2(0, 0x00, &[]), b"x".to_vec()].concat()).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(left, b"x");
        // LOCAL with an address block: the block is still consumed.
        let (got, left) = read(&[v2(0, 0x11, &[0; 12]), b"y".to_vec()].concat()).await;
        assert_eq!(got.unwrap(), None);
        assert_eq!(left, b"y");
        assert_eq!(read(&v2(1, 0x00, &[])).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn v2_bad_headers_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        let cases = [
            wrong_version,
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x11, &[0; 4]),
            v2(1, 0x21, &[0; 12]),
            v2(1, 0x41, &[0; 12]),
            v2(1, 0x11, &vec![0; V2_MAX_LEN + 1]),
        ];
        for bytes in cases {
            assert!(read(&bytes).await.0.is_err(), "{bytes:?}");
        }
        // Cut short: the connection ended inside the header.
        let cut = v2(1, 0x11, &[0; 12]);
        assert!(matches!(
            read(&cut[..20]).await.0,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}

//! Data plane seam: the resolver `HttpConnector` calls when it dials a new
//! upstream connection, answered from the [`DnsCache`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::vec;

use hyper_util::client::legacy::connect::dns::{GaiAddrs, GaiFuture, GaiResolver, Name};
use tower_service::Service;

use super::DnsCache;

/// The resolver for `HttpConnector::new_with_resolver`.
///
/// Names in the [`DnsCache`] are answered from it without I/O, starting one
/// address further along on every call so new connections spread over all
/// of a stamp's addresses (the connector tries them in order). Names not
/// (yet) in the cache go to getaddrinfo like hyper's default resolver, so a
/// connection made before the first refresh lands still works.
///
/// Called once per new connection, not per request: pooled connections
/// skip it.
#[derive(Clone, Debug)]
pub struct CacheResolver {
    cache: DnsCache,
    fallback: GaiResolver,
}

impl CacheResolver {
    /// A resolver reading `cache`.
    pub fn new(cache: DnsCache) -> Self {
        Self {
            cache,
            fallback: GaiResolver::new(),
        }
    }
}

impl Service<Name> for CacheResolver {
    type Response = ResolvedAddrs;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> ResolveFuture {
        match self.cache.rotated(name.as_str()) {
            // Port 0: the connector sets the port from the URI.
            Some(ips) => ResolveFuture(Pending::Cached(Some(
                ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
            ))),
            None => ResolveFuture(Pending::Fallback(self.fallback.call(name))),
        }
    }
}

/// The addresses [`CacheResolver`] returns for one connection.
#[derive(Debug)]
pub struct ResolvedAddrs(Addrs);

#[derive(Debug)]
enum Addrs {
    Cached(vec::IntoIter<SocketAddr>),
    Fallback(GaiAddrs),
}

impl Iterator for ResolvedAddrs {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        match &mut self.0 {
            Addrs::Cached(addrs) => addrs.next(),
            Addrs::Fallback(addrs) => addrs.next(),
        }
    }
}

/// The future [`CacheResolver`] returns: ready at once for cached names,
/// a getaddrinfo lookup on tokio's blocking pool otherwise.
#[derive(Debug)]
pub struct ResolveFuture(Pending);

#[derive(Debug)]
enum Pending {
    /// Answered from the cache; taken on the first poll.
    Cached(Option<Vec<SocketAddr>>),
    Fallback(GaiFuture),
}

impl Future for ResolveFuture {
    type Output = Result<ResolvedAddrs, io::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin, so the enum is too.
        match &mut self.get_mut().0 {
            Pending::Cached(addrs) => {
                let addrs = addrs.take().expect("ResolveFuture polled after completion");
                Poll::Ready(Ok(ResolvedAddrs(Addrs::Cached(addrs.into_iter()))))
            }
            Pending::Fallback(gai) => Pin::new(gai)
                .poll(cx)
                .map_ok(|addrs| ResolvedAddrs(Addrs::Fallback(addrs))),
        }
    }
}

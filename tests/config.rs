//! Config loading end to end: a table of broken files, each with the message
//! an operator must see, and valid files checked for defaults and path
//! resolution. Files are written to a temporary directory because certificate
//! paths resolve against the config file's directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use stampgate::config::defaults::*;
use stampgate::config::{self, AllUnhealthy, Config, ConfigError, Method};

/// The smallest valid config; cases append to it or replace it.
macro_rules! base {
    () => {
        r#"
[[routes]]
name = "r"
pool = "p"

[[pools.p.stamps]]
name = "a"
region = "westeurope"
address = "127.0.0.1:9001"
"#
    };
}

/// A second pool, for cases that need two.
macro_rules! pool_q {
    () => {
        r#"
[[pools.q.stamps]]
name = "b"
region = "eastus2"
address = "127.0.0.1:9002"
"#
    };
}

/// What a case writes next to its config file.
#[derive(Clone, Copy)]
enum File {
    /// Literal contents.
    Text(&'static str),
    /// A self-signed certificate (PEM) for `localhost`.
    Cert,
    /// The private key of [`File::Cert`] (PKCS#8 PEM).
    Key,
    /// A key that does not belong to [`File::Cert`].
    OtherKey,
}

struct Bad {
    name: &'static str,
    toml: &'static str,
    files: &'static [(&'static str, File)],
    expect: &'static [&'static str],
}

const fn bad(name: &'static str, toml: &'static str, expect: &'static [&'static str]) -> Bad {
    Bad {
        name,
        toml,
        files: &[],
        expect,
    }
}

const TLS_HEAD: &str = "[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n";

fn bad_configs() -> Vec<Bad> {
    vec![
        bad(
            "unknown HTTP/1.1 engine names the key and the choices",
            concat!("[proxy]\nhttp1_engine = \"turbo\"\n", base!()),
            &["proxy.http1_engine = \"turbo\": must be \"fast\" or \"hyper\""],
        ),
        // ---- syntax and shape: line:column and the key path ----
        bad(
            "unknown key names key and line",
            concat!(
                "[proxy]\nlisten = [\"127.0.0.1:8080\"]\nlisen = [\"x\"]\n",
                base!()
            ),
            &[
                ":3:1: proxy.lisen = [\"x\"]: unknown field `lisen`",
                "expected one of `listen`",
            ],
        ),
        bad(
            "unknown key deep in a pool",
            concat!(
                base!(),
                "\n[pools.p.probe]\ninterval = \"1s\"\nintervall = \"2s\"\n"
            ),
            &[":13:1: pools.p.probe.intervall = \"2s\": unknown field `intervall`"],
        ),
        bad(
            "unknown key inside an inline table",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"p\"\nretry = { attempt = 3 }\n",
                pool_q!()
            ),
            &[":4:11: routes[0].retry.attempt = 3: unknown field `attempt`"],
        ),
        bad(
            "unknown top-level table",
            concat!("[prox]\nlisten = []\n", base!()),
            &[":1:2: prox: unknown field `prox`"],
        ),
        bad(
            "wrong type",
            concat!(base!(), "weight = \"100\"\n"),
            &[":10:10: pools.p.stamps[0].weight = \"100\": invalid type: string \"100\""],
        ),
        bad(
            "missing required key",
            "[[routes]]\nname = \"r\"\npool = \"p\"\n\n[[pools.p.stamps]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n",
            &[":5:1: pools.p.stamps[0]: missing field `region`"],
        ),
        bad(
            "TOML syntax error",
            concat!("[proxy]\nlisten = [\"127.0.0.1:8080\"\n", base!()),
            &["stampgate.toml:4:1: invalid array, expected `]`"],
        ),
        // ---- units ----
        bad(
            "duration without unit",
            concat!(
                base!(),
                "[[routes]]\nname = \"r2\"\npath_prefix = \"/x\"\npool = \"p\"\ntimeout = \"30\"\n"
            ),
            &[
                "routes[1].timeout = \"30\": missing unit after 30",
                "ms, s, m, h",
            ],
        ),
        bad(
            "duration with unknown unit",
            concat!(base!(), "[pools.p.probe]\ninterval = \"1d\"\n"),
            &[
                "pools.p.probe.interval = \"1d\": unknown unit \"d\"",
                "\"1m30s\"",
            ],
        ),
        bad(
            "duration as a bare integer",
            concat!(base!(), "[pools.p.probe]\ninterval = 5\n"),
            &[
                ":11:12: pools.p.probe.interval = 5: a duration needs a unit, e.g. \"5s\" or \"5ms\"",
            ],
        ),
        bad(
            "duration as a bare integer in an inline table",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"p\"\nretry = { per_try_timeout = 500 }\n",
                "[[pools.p.stamps]]\nname = \"a\"\nregion = \"x\"\naddress = \"127.0.0.1:1\"\n"
            ),
            &["routes[0].retry.per_try_timeout = 500: a duration needs a unit, e.g. \"500s\""],
        ),
        bad(
            "negative duration",
            concat!("[proxy]\nidle_timeout = \"-1s\"\n", base!()),
            &["proxy.idle_timeout = \"-1s\": negative durations are not allowed"],
        ),
        bad(
            "zero time limit",
            concat!("[proxy]\nheader_read_timeout = \"0s\"\n", base!()),
            &["proxy.header_read_timeout = \"0s\": must be more than 0s"],
        ),
        bad(
            "bad size",
            concat!("[proxy]\nmax_request_body = \"10XB\"\n", base!()),
            &[
                "proxy.max_request_body = \"10XB\": unknown unit \"XB\"",
                "KiB, MiB, GiB",
            ],
        ),
        // ---- listeners ----
        bad(
            "listen address with a host name",
            concat!("[proxy]\nlisten = [\"localhost:8080\"]\n", base!()),
            &["proxy.listen[0] = \"localhost:8080\": not a listen address: write IP:port"],
        ),
        bad(
            "listen port out of range",
            concat!("[proxy]\nlisten = [\"127.0.0.1:80800\"]\n", base!()),
            &[
                "proxy.listen[0] = \"127.0.0.1:80800\": port 80800 is out of range: a port is a number from 0 to 65535",
            ],
        ),
        bad(
            "admin port out of range",
            concat!("[admin]\nlisten = \"[::1]:65536\"\n", base!()),
            &["admin.listen = \"[::1]:65536\": port 65536 is out of range"],
        ),
        // ---- ${ENV} interpolation ----
        bad(
            "unset environment variable names the variable and the key",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"p\"\n",
                "[[pools.p.stamps]]\nname = \"a\"\nregion = \"x\"\naddress = \"${STAMPGATE_TEST_UNSET_5EC2}:9001\"\n"
            ),
            &[
                "pools.p.stamps[0].address = \"${STAMPGATE_TEST_UNSET_5EC2}:9001\": environment variable STAMPGATE_TEST_UNSET_5EC2 is not set",
                "write $${ for a literal ${",
            ],
        ),
        bad(
            "unclosed variable reference",
            concat!("[admin]\ntoken_env = \"${TOKEN\"\n", base!()),
            &["admin.token_env = \"${TOKEN\": \"${\" without a closing \"}\""],
        ),
        bad(
            "no listener at all",
            concat!("[proxy]\nlisten = []\n", base!()),
            &["proxy.listen = []: no listener"],
        ),
        bad(
            "same address twice",
            concat!("[admin]\nlisten = \"127.0.0.1:8080\"\n", base!()),
            &["admin.listen = \"127.0.0.1:8080\": overlaps proxy.listen[0] (127.0.0.1:8080)"],
        ),
        bad(
            "wildcard next to a specific address on one port",
            concat!(
                "[proxy]\nlisten = [\"0.0.0.0:8080\", \"127.0.0.1:8080\"]\n",
                base!()
            ),
            &[
                "proxy.listen[1] = \"127.0.0.1:8080\": overlaps proxy.listen[0] (0.0.0.0:8080): both would bind port 8080",
            ],
        ),
        bad(
            "TLS listener without certificate",
            concat!("[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n", base!()),
            &[
                "proxy.tls_listen = [\"127.0.0.1:8443\"]: TLS listeners need at least one [[proxy.certificates]]",
            ],
        ),
        // ---- certificates (files next to the config) ----
        Bad {
            name: "certificate file missing",
            toml: concat!(
                "[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n",
                "[[proxy.certificates]]\ncert = \"certs/missing.pem\"\nkey = \"certs/key.pem\"\n",
                base!()
            ),
            files: &[("certs/key.pem", File::Key)],
            expect: &[
                "proxy.certificates[0].cert = \"certs/missing.pem\": file missing: ",
                "certs/missing.pem",
            ],
        },
        Bad {
            name: "certificate not PEM",
            toml: concat!(
                "[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n",
                "[[proxy.certificates]]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                base!()
            ),
            files: &[("cert.pem", File::Text("hello\n")), ("key.pem", File::Key)],
            expect: &[
                "proxy.certificates[0].cert = \"cert.pem\": not PEM: no \"BEGIN CERTIFICATE\" block",
            ],
        },
        Bad {
            name: "key not PEM (a certificate where the key should be)",
            toml: concat!(
                "[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n",
                "[[proxy.certificates]]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                base!()
            ),
            files: &[("cert.pem", File::Cert), ("key.pem", File::Cert)],
            expect: &["proxy.certificates[0].key = \"key.pem\": not PEM: no \"BEGIN PRIVATE KEY\""],
        },
        Bad {
            name: "key of another certificate",
            toml: concat!(
                "[[proxy.certificates]]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
                base!()
            ),
            files: &[("cert.pem", File::Cert), ("key.pem", File::OtherKey)],
            expect: &[
                "proxy.certificates[0].key = \"key.pem\": does not match the certificate in ",
            ],
        },
        Bad {
            name: "bad SNI name",
            toml: concat!(
                "[[proxy.certificates]]\nserver_names = [\"bad name\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
                base!()
            ),
            files: &[("c.pem", File::Cert), ("k.pem", File::Key)],
            expect: &[
                "proxy.certificates[0].server_names[0] = \"bad name\": not a valid host name",
            ],
        },
        // ---- behind a load balancer ----
        bad(
            "redirect without a TLS listener",
            concat!("[proxy]\nredirect_http_to_https = true\n", base!()),
            &["proxy.redirect_http_to_https = true: needs a TLS listener to redirect to"],
        ),
        bad(
            "redirect exemption not a path",
            concat!("[proxy]\nredirect_exempt_paths = [\"acme\"]\n", base!()),
            &["proxy.redirect_exempt_paths[0] = \"acme\": must be a path prefix starting with '/'"],
        ),
        bad(
            "health listener on the admin port",
            concat!("[health]\nlisten = \"127.0.0.1:9901\"\n", base!()),
            &["health.listen = \"127.0.0.1:9901\": overlaps admin.listen (127.0.0.1:9901)"],
        ),
        // ---- upstream mutual TLS ----
        Bad {
            name: "upstream client certificate missing",
            toml: concat!(
                base!(),
                "[pools.p]\nupstream_tls = { cert = \"edge.pem\", key = \"k.pem\" }\n"
            ),
            files: &[("k.pem", File::Key)],
            expect: &["pools.p.upstream_tls.cert = \"edge.pem\": file missing: "],
        },
        Bad {
            name: "upstream client key without its certificate",
            toml: concat!(base!(), "[pools.p]\nupstream_tls = { key = \"k.pem\" }\n"),
            files: &[("k.pem", File::Key)],
            expect: &["pools.p.upstream_tls.key = \"k.pem\": needs pools.p.upstream_tls.cert too"],
        },
        Bad {
            name: "upstream client key of another certificate",
            toml: concat!(
                base!(),
                "[pools.p]\nupstream_tls = { cert = \"c.pem\", key = \"k.pem\" }\n"
            ),
            files: &[("c.pem", File::Cert), ("k.pem", File::OtherKey)],
            expect: &["pools.p.upstream_tls.key = \"k.pem\": does not match the certificate in "],
        },
        Bad {
            name: "two trust files for one pool",
            toml: concat!(
                base!(),
                "[pools.p]\nca_file = \"c.pem\"\nupstream_tls = { ca_file = \"c.pem\" }\n"
            ),
            files: &[("c.pem", File::Cert)],
            expect: &[
                "pools.p.upstream_tls.ca_file = \"c.pem\": pools.p.ca_file is set too; name the trust file once",
            ],
        },
        bad(
            "upstream server_name not a name",
            concat!(
                base!(),
                "[pools.p]\nupstream_tls = { server_name = \"bad name\" }\n"
            ),
            &[
                "pools.p.upstream_tls.server_name = \"bad name\": must be a DNS name or an IP address",
            ],
        ),
        bad(
            "unknown key in the upstream_tls table",
            concat!(
                base!(),
                "[pools.p]\nupstream_tls = { certificate = \"c.pem\" }\n"
            ),
            &["unknown field `certificate`"],
        ),
        // ---- admin ----
        bad(
            "token_env not a variable name",
            concat!("[admin]\ntoken_env = \"$TOKEN\"\n", base!()),
            &["admin.token_env = \"$TOKEN\": must be an environment variable name"],
        ),
        // ---- routes ----
        bad("no routes", pool_q!(), &["routes = []: no routes"]),
        bad(
            "route to a missing pool lists the pools that exist",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"nope\"\n",
                pool_q!(),
                base!()
            ),
            &["routes[0].pool = \"nope\": no such pool; defined pools: p, q"],
        ),
        bad(
            "duplicate route name",
            concat!(
                base!(),
                "[[routes]]\nname = \"r\"\npath_prefix = \"/api/\"\npool = \"p\"\n"
            ),
            &["routes[1].name = \"r\": duplicate route name: also routes[0].name"],
        ),
        bad(
            "same host and prefix twice",
            concat!(base!(), "[[routes]]\nname = \"r2\"\npool = \"p\"\n"),
            &["routes[1].path_prefix = \"/\": routes[0] already matches host \"*\""],
        ),
        bad(
            "path_prefix without slash",
            concat!(
                "[[routes]]\nname = \"r\"\npath_prefix = \"api\"\npool = \"q\"\n",
                pool_q!()
            ),
            &["routes[0].path_prefix = \"api\": must start with '/'"],
        ),
        bad(
            "empty host",
            concat!(
                "[[routes]]\nname = \"r\"\nhosts = [\"\"]\npool = \"q\"\n",
                pool_q!()
            ),
            &["routes[0].hosts[0] = \"\": empty host name"],
        ),
        bad(
            "retry attempts out of range",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"q\"\nretry = { attempts = 6 }\n",
                pool_q!()
            ),
            &["routes[0].retry.attempts = 6: must be between 1 and 5"],
        ),
        bad(
            "retry budget out of range",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"q\"\nretry = { budget_percent = 101 }\n",
                pool_q!()
            ),
            &["routes[0].retry.budget_percent = 101: must be between 0 and 100"],
        ),
        bad(
            "per-try timeout longer than the route timeout",
            concat!(
                "[[routes]]\nname = \"r\"\npool = \"q\"\ntimeout = \"2s\"\nretry = { per_try_timeout = \"3s\" }\n",
                pool_q!()
            ),
            &["routes[0].retry.per_try_timeout = \"3s\": must not exceed the route timeout (2s)"],
        ),
        // ---- pools ----
        bad(
            "empty pool",
            "[[routes]]\nname = \"r\"\npool = \"p\"\n[pools.p]\nmethod = \"weighted\"\n",
            &["pools.p.stamps = []: empty pool: add at least one [[pools.p.stamps]] entry"],
        ),
        bad(
            "bad method",
            concat!(base!(), "[pools.p]\nmethod = \"round-robin\"\n"),
            &[
                "pools.p.method = \"round-robin\": must be one of \"priority\", \"weighted\", \"latency\"",
            ],
        ),
        bad(
            "bad all_unhealthy",
            concat!(base!(), "[pools.p]\nall_unhealthy = \"panic\"\n"),
            &["pools.p.all_unhealthy = \"panic\": must be \"fail-open\" or \"fail-closed\""],
        ),
        bad(
            "ca_file without TLS",
            concat!(base!(), "[pools.p]\nca_file = \"ca.pem\"\n"),
            &["pools.p.ca_file = \"ca.pem\": only used with upstream_tls = true"],
        ),
        bad(
            "pool name with a slash",
            "[[routes]]\nname = \"r\"\npool = \"a/b\"\n[[pools.\"a/b\".stamps]]\nname = \"x\"\nregion = \"r\"\naddress = \"h:1\"\n",
            &["pools.\"a/b\" = \"a/b\": must be non-empty and use only letters"],
        ),
        // ---- probe ----
        bad(
            "probe timeout not below interval",
            concat!(
                base!(),
                "[pools.p.probe]\ninterval = \"1s\"\ntimeout = \"2s\"\n"
            ),
            &["pools.p.probe.timeout = \"2s\": must be less than interval (1s)"],
        ),
        bad(
            "fast probe interval longer than interval",
            concat!(
                base!(),
                "[pools.p.probe]\ninterval = \"1s\"\nfast_interval = \"2s\"\n"
            ),
            &["pools.p.probe.fast_interval = \"2s\": must not be longer than interval (1s)"],
        ),
        bad(
            "latency factor of one",
            concat!(base!(), "[pools.p.outlier]\nlatency_factor = 1.0\n"),
            &["pools.p.outlier.latency_factor = 1: must be above 1"],
        ),
        bad(
            "hedge after zero",
            concat!(
                base!(),
                "[[routes]]\nname = \"h\"\npool = \"p\"\npath_prefix = \"/h/\"\nretry = { hedge_after = \"0s\" }\n"
            ),
            &["routes[1].retry.hedge_after = \"0s\": must be more than 0s"],
        ),
        bad(
            "hedge not below the per-try timeout",
            concat!(
                base!(),
                "[[routes]]\nname = \"h\"\npool = \"p\"\npath_prefix = \"/h/\"\nretry = { hedge_after = \"5s\" }\n"
            ),
            &["routes[1].retry.hedge_after = \"5s\": must be less than per_try_timeout (5s)"],
        ),
        bad(
            "hedge at a quantile out of range",
            concat!(
                base!(),
                "[[routes]]\nname = \"h\"\npool = \"p\"\npath_prefix = \"/h/\"\nretry = { hedge_after = \"p100\" }\n"
            ),
            &[
                "routes[1].retry.hedge_after = \"p100\": a quantile must be from p50 to p99.9 (e.g. \"p95\")",
            ],
        ),
        bad(
            "hedge at a quantile without a second try",
            concat!(
                base!(),
                "[[routes]]\nname = \"h\"\npool = \"p\"\npath_prefix = \"/h/\"\nretry = { attempts = 1, hedge_after = \"p95\" }\n"
            ),
            &["routes[1].retry.hedge_after = \"p95\": a hedge is a second try"],
        ),
        bad(
            "hedge without a second try",
            concat!(
                base!(),
                "[[routes]]\nname = \"h\"\npool = \"p\"\npath_prefix = \"/h/\"\nretry = { attempts = 1, hedge_after = \"100ms\" }\n"
            ),
            &[
                "routes[1].retry.hedge_after = \"100ms\": a hedge is a second try: needs retry.attempts of at least 2",
            ],
        ),
        bad(
            "more successes required than samples",
            concat!(
                base!(),
                "[pools.p.probe]\nsample_size = 4\nsuccessful_samples_required = 5\n"
            ),
            &["pools.p.probe.successful_samples_required = 5: must not exceed sample_size (4)"],
        ),
        bad(
            "sample_size zero",
            concat!(base!(), "[pools.p.probe]\nsample_size = 0\n"),
            &["pools.p.probe.sample_size = 0: must be between 1 and 100"],
        ),
        bad(
            "probe method POST",
            concat!(base!(), "[pools.p.probe]\nmethod = \"POST\"\n"),
            &["pools.p.probe.method = \"POST\": must be \"GET\" or \"HEAD\""],
        ),
        bad(
            "expect_status pattern",
            concat!(
                base!(),
                "[pools.p.probe]\nexpect_status = [\"200\", \"2xx\"]\n"
            ),
            &[
                "pools.p.probe.expect_status[1] = \"2xx\": must be a status \"200\" or a range \"200-299\"",
            ],
        ),
        bad(
            "expect_status range backwards",
            concat!(base!(), "[pools.p.probe]\nexpect_status = [\"299-200\"]\n"),
            &["pools.p.probe.expect_status[0] = \"299-200\": must be a status"],
        ),
        bad(
            "expect_body with HEAD",
            concat!(
                base!(),
                "[pools.p.probe]\nmethod = \"HEAD\"\nexpect_body = \"ok\"\n"
            ),
            &["pools.p.probe.expect_body = \"ok\": a HEAD response has no body"],
        ),
        bad(
            "probe header name with a space",
            concat!(
                base!(),
                "[pools.p.probe]\nheaders = { \"X Probe\" = \"1\" }\n"
            ),
            &["pools.p.probe.headers.\"X Probe\" = \"1\": not a valid header name"],
        ),
        bad(
            "probe path not absolute",
            concat!(base!(), "[pools.p.probe]\npath = \"health\"\n"),
            &["pools.p.probe.path = \"health\": must be a URL path starting with '/'"],
        ),
        // ---- health ----
        bad(
            "degraded_error_rate above 1",
            concat!(base!(), "[pools.p.health]\ndegraded_error_rate = 1.5\n"),
            &["pools.p.health.degraded_error_rate = 1.5: must be a share above 0 and at most 1"],
        ),
        bad(
            "degraded_weight_percent zero",
            concat!(base!(), "[pools.p.health]\ndegraded_weight_percent = 0\n"),
            &["pools.p.health.degraded_weight_percent = 0: must be between 1 and 100"],
        ),
        bad(
            "probe jitter over 50",
            concat!(base!(), "[pools.p.probe]\njitter_percent = 80\n"),
            &["pools.p.probe.jitter_percent = 80: must be between 0 and 50"],
        ),
        // ---- outlier ----
        bad(
            "failure_rate above 1",
            concat!(base!(), "[pools.p.outlier]\nfailure_rate = 1.5\n"),
            &["pools.p.outlier.failure_rate = 1.5: must be a share from 0 (off) to 1"],
        ),
        bad(
            "max_ejected_percent over 100",
            concat!(base!(), "[pools.p.outlier]\nmax_ejected_percent = 101\n"),
            &["pools.p.outlier.max_ejected_percent = 101: must be between 0 and 100"],
        ),
        bad(
            "consecutive_failures zero",
            concat!(base!(), "[pools.p.outlier]\nconsecutive_failures = 0\n"),
            &["pools.p.outlier.consecutive_failures = 0: must be at least 1"],
        ),
        bad(
            "max_ejection below base_ejection",
            concat!(
                base!(),
                "[pools.p.outlier]\nbase_ejection = \"30s\"\nmax_ejection = \"10s\"\n"
            ),
            &["pools.p.outlier.max_ejection = \"10s\": must not be less than base_ejection (30s)"],
        ),
        // ---- stamps ----
        bad(
            "duplicate stamp name across pools names both places",
            concat!(
                base!(),
                "[[pools.q.stamps]]\nname = \"a\"\nregion = \"eastus2\"\naddress = \"127.0.0.1:9002\"\n"
            ),
            &[
                "pools.q.stamps[0].name = \"a\": duplicate stamp name: already used by pools.p.stamps[0]",
            ],
        ),
        bad(
            "weight out of range",
            concat!(base!(), "weight = 1001\n"),
            &["pools.p.stamps[0].weight = 1001: must be between 0 and 1000"],
        ),
        bad(
            "negative weight",
            concat!(base!(), "weight = -1\n"),
            &["pools.p.stamps[0].weight = -1: must be between 0 and 1000"],
        ),
        bad(
            "priority zero",
            concat!(base!(), "priority = 0\n"),
            &["pools.p.stamps[0].priority = 0: must be between 1 and 255"],
        ),
        bad(
            "address without port",
            "[[routes]]\nname = \"r\"\npool = \"p\"\n[[pools.p.stamps]]\nname = \"a\"\nregion = \"x\"\naddress = \"127.0.0.1\"\n",
            &["pools.p.stamps[0].address = \"127.0.0.1\": missing port: write host:port"],
        ),
        bad(
            "IPv6 address without brackets",
            "[[routes]]\nname = \"r\"\npool = \"p\"\n[[pools.p.stamps]]\nname = \"a\"\nregion = \"x\"\naddress = \"::1:9001\"\n",
            &[
                "pools.p.stamps[0].address = \"::1:9001\": IPv6 addresses need brackets",
                "\"[::1]:9001\"",
            ],
        ),
        bad(
            "port out of range",
            "[[routes]]\nname = \"r\"\npool = \"p\"\n[[pools.p.stamps]]\nname = \"a\"\nregion = \"x\"\naddress = \"stamp:99999\"\n",
            &["pools.p.stamps[0].address = \"stamp:99999\": port must be a number from 1 to 65535"],
        ),
        bad(
            "same address twice in a pool",
            concat!(
                base!(),
                "[[pools.p.stamps]]\nname = \"a2\"\nregion = \"x\"\naddress = \"127.0.0.1:9001\"\n"
            ),
            &["pools.p.stamps[1].address = \"127.0.0.1:9001\": same address as pools.p.stamps[0]"],
        ),
    ]
}

/// A certificate and its key, and a second unrelated key, made once.
fn pems() -> &'static (String, String, String) {
    static PEMS: OnceLock<(String, String, String)> = OnceLock::new();
    PEMS.get_or_init(|| {
        let names = vec!["localhost".to_string()];
        let one = rcgen::generate_simple_self_signed(names.clone()).expect("rcgen");
        let two = rcgen::generate_simple_self_signed(names).expect("rcgen");
        (
            one.cert.pem(),
            one.key_pair.serialize_pem(),
            two.key_pair.serialize_pem(),
        )
    })
}

fn contents(file: File) -> String {
    let (cert, key, other) = pems();
    match file {
        File::Text(t) => t.to_string(),
        File::Cert => cert.clone(),
        File::Key => key.clone(),
        File::OtherKey => other.clone(),
    }
}

/// Writes `toml` as `stampgate.toml` plus `files` into `dir`; returns the
/// config path.
fn write_case(dir: &Path, toml: &str, files: &[(&str, File)]) -> PathBuf {
    for (name, file) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents(*file)).expect("write file");
    }
    let path = dir.join("stampgate.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

#[test]
fn every_bad_config_is_refused_with_file_key_value_and_rule() {
    let cases = bad_configs();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_case(dir.path(), case.toml, case.files);
        let message = match config::load(&path) {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.name));
                continue;
            }
            Err(e) => e.to_string(),
        };
        if !message.starts_with(&path.display().to_string()) {
            failures.push(format!(
                "{}: message does not start with the file: {message}",
                case.name
            ));
        }
        if message.contains('\n') {
            failures.push(format!("{}: message is not one line: {message}", case.name));
        }
        for fragment in case.expect {
            if !message.contains(fragment) {
                failures.push(format!(
                    "{}: missing {fragment:?} in\n    {message}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn error_format_is_file_key_value_rule() {
    let text = concat!(
        base!(),
        "[pools.p.probe]\ninterval = \"1s\"\ntimeout = \"2s\"\n"
    );
    let err = config::parse_str(text, Path::new("config/stampgate.toml")).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "config/stampgate.toml: pools.p.probe.timeout = \"2s\": must be less than interval (1s)"
    );
    assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "pools.p.probe.timeout"));
}

#[test]
fn syntax_error_format_has_line_and_column() {
    let text = "[proxy]\nlisen = [\"x\"]\n";
    let err = config::parse_str(text, Path::new("c.toml")).expect_err("invalid");
    assert!(
        err.to_string()
            .starts_with("c.toml:2:1: proxy.lisen = [\"x\"]: unknown field `lisen`"),
        "{err}"
    );
    assert!(matches!(
        err,
        ConfigError::Syntax {
            line: 2,
            column: 1,
            ..
        }
    ));
}

#[test]
fn unreadable_file_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    let err = config::load(&path).expect_err("no file");
    assert!(matches!(err, ConfigError::Io { .. }));
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read config:", path.display())),
        "{message}"
    );
}

fn parse(text: &str) -> Config {
    config::parse_str(text, Path::new("dir/stampgate.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn defaults_fill_every_optional_key() {
    let cfg = parse(base!());
    let proxy = &cfg.proxy;
    assert_eq!(proxy.listen, vec![DEFAULT_LISTEN.parse().expect("addr")]);
    assert!(proxy.tls_listen.is_empty() && proxy.certificates.is_empty());
    assert_eq!(proxy.max_request_body, 10 * 1024 * 1024);
    assert_eq!(proxy.header_read_timeout, Duration::from_secs(10));
    assert_eq!(proxy.idle_timeout, Duration::from_secs(60));
    assert_eq!(proxy.shutdown_grace, Duration::from_secs(10));
    assert!(proxy.stamp_header);
    assert!(proxy.forwarded_headers);
    assert!(proxy.request_id);
    assert_eq!(proxy.http1_engine, config::Http1Engine::Fast);
    assert_eq!(cfg.admin.listen, "127.0.0.1:9901".parse().expect("addr"));
    assert_eq!(
        (
            cfg.admin.token_env.as_deref(),
            cfg.admin.state_file.as_deref()
        ),
        (None, None)
    );

    let route = &cfg.routes[0];
    assert_eq!(
        (route.hosts.as_slice(), route.path_prefix.as_str()),
        (&["*".to_string()][..], "/")
    );
    assert_eq!(route.timeout, Duration::from_secs(30));
    assert_eq!(
        route.retry,
        config::RetryConfig {
            attempts: 2,
            budget_percent: 20,
            per_try_timeout: Duration::from_secs(5),
            replay_limit: 64 * 1024,
            on_server_error: true,
            hedge_after: None,
        }
    );

    let pool = &cfg.pools[0];
    assert_eq!(
        (pool.method, pool.all_unhealthy),
        (Method::Weighted, AllUnhealthy::FailOpen)
    );
    assert_eq!(pool.latency_sensitivity, Duration::from_millis(50));
    assert_eq!(pool.slow_start, Duration::from_secs(30));
    assert_eq!(pool.connect_timeout, Duration::from_secs(1));
    assert!(!pool.upstream_tls && !pool.upstream_http2);
    assert_eq!(
        (pool.ca_file.as_deref(), pool.host_header.as_deref()),
        (None, None)
    );

    let probe = &pool.probe;
    assert_eq!(probe.path, "/healthservice/health/stamp");
    assert_eq!(probe.method, http::Method::GET);
    assert!(!probe.https);
    assert_eq!(probe.interval, Duration::from_secs(1));
    assert_eq!(probe.unhealthy_interval, Duration::from_millis(500));
    assert_eq!(probe.timeout, Duration::from_millis(500));
    assert_eq!(
        (probe.sample_size, probe.successful_samples_required),
        (4, 3)
    );
    assert_eq!(probe.expect_status, vec![(200, 399)]);
    assert!(probe.expect_body.is_none() && probe.headers.is_empty() && probe.host.is_none());

    let outlier = &pool.outlier;
    assert_eq!(outlier.consecutive_failures, 5);
    assert_eq!(outlier.base_ejection, Duration::from_secs(10));
    assert_eq!(outlier.max_ejection, Duration::from_secs(300));
    assert_eq!(outlier.max_ejected_percent, 50);

    let stamp = &pool.stamps[0];
    assert_eq!(
        (stamp.weight, stamp.priority),
        (DEFAULT_WEIGHT, DEFAULT_PRIORITY)
    );
    assert_eq!((stamp.host.as_str(), stamp.port), ("127.0.0.1", 9001));
}

#[test]
fn dependent_defaults_follow_the_values_they_depend_on() {
    let cfg = parse(concat!(
        "[[routes]]\nname = \"r\"\npool = \"p\"\ntimeout = \"2s\"\n",
        "[pools.p]\nupstream_tls = true\n",
        "[pools.p.probe]\ninterval = \"600ms\"\nsample_size = 2\n",
        "[pools.p.outlier]\nbase_ejection = \"10m\"\n",
        "[[pools.p.stamps]]\nname = \"a\"\nregion = \"r\"\naddress = \"[::1]:9001\"\n",
    ));
    // per_try_timeout is capped at the route timeout.
    assert_eq!(cfg.routes[0].retry.per_try_timeout, Duration::from_secs(2));
    let pool = &cfg.pools[0];
    // probe timeout and unhealthy interval: half the interval.
    assert_eq!(pool.probe.timeout, Duration::from_millis(300));
    assert_eq!(pool.probe.unhealthy_interval, Duration::from_millis(300));
    // successful_samples_required is capped at sample_size.
    assert_eq!(pool.probe.successful_samples_required, 2);
    // probes follow upstream TLS.
    assert!(pool.probe.https);
    // max_ejection is raised to a longer base_ejection.
    assert_eq!(pool.outlier.max_ejection, Duration::from_secs(600));
    // IPv6 stamp address: host without brackets.
    assert_eq!(
        (pool.stamps[0].host.as_str(), pool.stamps[0].port),
        ("::1", 9001)
    );
}

#[test]
fn explicit_values_are_kept_and_normalised() {
    let cfg = parse(concat!(
        "[proxy]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nmax_request_body = \"1kB\"\nstamp_header = false\n",
        "forwarded_headers = false\nrequest_id = false\nhttp1_engine = \"hyper\"\n",
        "[[routes]]\nname = \"r\"\nhosts = [\"Catalog.Example.COM\", \"*\"]\npath_prefix = \"/api/\"\npool = \"p\"\n",
        "retry = { attempts = 1, budget_percent = 0, replay_limit = \"0\" }\n",
        "[pools.p]\nmethod = \"priority\"\nall_unhealthy = \"fail-closed\"\nslow_start = \"0s\"\nhost_header = \"catalog.internal:8443\"\n",
        "[pools.p.probe]\nmethod = \"HEAD\"\nexpect_status = [\"200\", \"204-205\"]\nheaders = { \"X-Probe\" = \"stampgate\" }\n",
        "[[pools.p.stamps]]\nname = \"a\"\nregion = \"r\"\naddress = \"stamp.example.com:443\"\nweight = 0\npriority = 255\n",
    ));
    // Port 0 twice is fine: each bind gets its own free port.
    assert_eq!(cfg.proxy.listen.len(), 2);
    assert_eq!(cfg.proxy.max_request_body, 1000);
    assert!(!cfg.proxy.stamp_header);
    assert!(!cfg.proxy.forwarded_headers);
    assert!(!cfg.proxy.request_id);
    assert_eq!(cfg.proxy.http1_engine, config::Http1Engine::Hyper);
    assert_eq!(cfg.routes[0].hosts, ["catalog.example.com", "*"]);
    assert_eq!(cfg.routes[0].retry.attempts, 1);
    let pool = &cfg.pools[0];
    assert_eq!(
        (pool.method, pool.all_unhealthy),
        (Method::Priority, AllUnhealthy::FailClosed)
    );
    assert_eq!(pool.slow_start, Duration::ZERO);
    assert_eq!(pool.host_header.as_deref(), Some("catalog.internal:8443"));
    assert_eq!(pool.probe.method, http::Method::HEAD);
    assert_eq!(pool.probe.expect_status, vec![(200, 200), (204, 205)]);
    assert_eq!(pool.probe.headers[0].0.as_str(), "x-probe");
    assert_eq!(pool.probe.headers[0].1, "stampgate");
    assert_eq!((pool.stamps[0].weight, pool.stamps[0].priority), (0, 255));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("etc");
    let ca_abs = dir.path().join("ca.pem");
    std::fs::write(&ca_abs, contents(File::Cert)).expect("write ca");
    let toml = format!(
        concat!(
            "{}[[proxy.certificates]]\nserver_names = [\"LocalHost\", \"*.example.com\"]\n",
            "cert = \"certs/cert.pem\"\nkey = \"certs/key.pem\"\n",
            "[admin]\nstate_file = \"var/state.json\"\n",
            "[pools.p]\nupstream_tls = true\nca_file = {:?}\n",
            base!()
        ),
        TLS_HEAD,
        ca_abs.display().to_string(),
    );
    std::fs::create_dir_all(&sub).expect("mkdir");
    let path = write_case(
        &sub,
        &toml,
        &[("certs/cert.pem", File::Cert), ("certs/key.pem", File::Key)],
    );

    // Loaded from another working directory's point of view: paths are
    // anchored at the file, not at the process.
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let cert = &cfg.proxy.certificates[0];
    assert_eq!(cert.cert_path, sub.join("certs/cert.pem"));
    assert_eq!(cert.key_path, sub.join("certs/key.pem"));
    assert_eq!(cert.cert_chain.len(), 1);
    assert_eq!(cert.server_names, ["localhost", "*.example.com"]);
    assert_eq!(cfg.admin.state_file, Some(sub.join("var/state.json")));
    // Absolute paths stay as written.
    assert_eq!(cfg.pools[0].ca_file.as_deref(), Some(ca_abs.as_path()));
    assert_eq!(cfg.source, path);
}

#[test]
fn parse_str_resolves_against_the_source_parent() {
    let cfg = parse(concat!("[admin]\nstate_file = \"state.json\"\n", base!()));
    assert_eq!(cfg.admin.state_file, Some(PathBuf::from("dir/state.json")));
    assert_eq!(cfg.source, PathBuf::from("dir/stampgate.toml"));
}

#[test]
fn certificates_without_a_tls_listener_are_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = concat!(
        "[[proxy.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        base!()
    );
    let path = write_case(
        dir.path(),
        toml,
        &[("c.pem", File::Cert), ("k.pem", File::Key)],
    );
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.proxy.certificates.len(), 1);
    assert!(cfg.proxy.tls_listen.is_empty());
}

#[test]
fn pools_are_in_name_order_and_routes_in_file_order() {
    let cfg = parse(concat!(
        pool_q!(),
        "[[routes]]\nname = \"z\"\npath_prefix = \"/z/\"\npool = \"q\"\n",
        base!()
    ));
    let pools: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    let routes: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pools, ["p", "q"]);
    assert_eq!(routes, ["z", "r"]);
}

#[test]
fn check_summary_of_the_example_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/stampgate.toml");
    let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let text = config::summary(&cfg);
    println!("{text}");
    for line in [
        "  proxy  http   127.0.0.1:8080\n",
        "  admin  http   127.0.0.1:9901  token from $STAMPGATE_ADMIN_TOKEN\n",
        "catalog-api: hosts * path /catalogservice/ -> pool backend-apis (latency, fail-open)",
        "    westeurope-1     westeurope     127.0.0.1:9001  weight  100  priority 1\n",
        "    southeastasia-1  southeastasia  127.0.0.1:9003  weight  100  priority 1\n",
        "worst-case detection: active probes 2.25s = interval 1s + 1 x fast_interval 250ms + 2 x timeout 500ms",
        // 100 req/s over three equal stamps: 33.3 req/s each, 5 failures.
        "passive: 5 consecutive failures (~150ms at 100 req/s)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

fn stampgate() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_stampgate"))
}

/// Stamps' addresses and the admin token's variable from the environment,
/// as a systemd unit's `Environment=` or a container's `env:` gives them;
/// `$${` stays a literal `${`.
#[test]
fn env_variables_are_interpolated_into_string_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("env.toml");
    std::fs::write(
        &path,
        "[admin]\nstate_file = \"$${literal}/state.json\"\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\n\
         [[pools.p.stamps]]\nname = \"a\"\nregion = \"${SG_TEST_REGION}\"\naddress = \"${SG_TEST_HOST}:9001\"\n",
    )
    .expect("write");
    let out = stampgate()
        .args(["check", "--config"])
        .arg(&path)
        .env("SG_TEST_HOST", "127.0.0.9")
        .env("SG_TEST_REGION", "northeurope")
        .output()
        .expect("run stampgate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("127.0.0.9:9001"), "{stdout}");
    assert!(stdout.contains("northeurope"), "{stdout}");

    let out = stampgate()
        .args(["check", "--config"])
        .arg(&path)
        .env("SG_TEST_REGION", "northeurope")
        .env_remove("SG_TEST_HOST")
        .output()
        .expect("run stampgate");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pools.p.stamps[0].address = \"${SG_TEST_HOST}:9001\": environment variable SG_TEST_HOST is not set"),
        "{stderr}"
    );
}

/// Without `--config`, `check` (and `run`) read `STAMPGATE_CONFIG`, and
/// without that the packaged path.
#[test]
fn the_config_path_defaults_to_the_env_variable_then_etc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("from-env.toml");
    std::fs::write(&path, base!()).expect("write");
    let out = stampgate()
        .arg("check")
        .env(CONFIG_ENV, &path)
        .output()
        .expect("run stampgate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{}: OK", path.display())),
        "{stdout}"
    );

    let out = stampgate()
        .arg("check")
        .env_remove(CONFIG_ENV)
        .output()
        .expect("run stampgate");
    // Whether or not this machine has the file, the path is the one named.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(DEFAULT_CONFIG_PATH, "/etc/stampgate/stampgate.toml");
    assert!(text.contains(DEFAULT_CONFIG_PATH), "{text}");
}

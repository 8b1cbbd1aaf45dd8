//! Which hosts the operator may connect to on a ChronosDatabase's behalf (review M7).
//!
//! `spec.s3.endpoint` is written by whoever may create a ChronosDatabase, and the operator
//! connects there from its own namespace with the database's credentials: without a check, a
//! namespace user turns the operator into a request forger towards any in-cluster service or the
//! cloud's metadata endpoint. The operator's `--allowed-backend-hosts` (chart value
//! `operator.allowedBackendHosts`) names the hosts a cluster admin lets databases use; the MongoDB
//! URI is checked too (it comes from a labelled Secret, but the same list states the intent).
//! With no list, any host is allowed except link-local addresses and the cloud metadata names,
//! which no S3 or MongoDB server lives on and which hand out node credentials.

use std::net::IpAddr;

/// Host names that are cloud metadata services whatever they resolve to.
const METADATA_HOSTS: &[&str] = &["metadata", "metadata.google.internal", "metadata.azure.internal"];

/// One allowed host: `name` (exact), `*.suffix` (any subdomain), each optionally `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

/// The hosts ChronosDatabases may name; empty means any host but the always-refused ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendHosts {
    patterns: Vec<Pattern>,
}

impl BackendHosts {
    /// Parse `minio.storage.svc:9000`, `*.svc.cluster.local`, `10.0.0.7`, `[fd00::1]:9000`, …
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut out = Vec::new();
        for raw in patterns {
            let raw = raw.as_ref().trim();
            if raw.is_empty() {
                continue;
            }
            let (wildcard, rest) = match raw.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            let (host, port) = split_port(rest)
                .ok_or_else(|| format!("`{raw}`: expected host, *.domain, each with an optional :port"))?;
            if host.is_empty() || host.contains(['/', '@', '*']) {
                return Err(format!("`{raw}`: expected host, *.domain, each with an optional :port"));
            }
            out.push(Pattern {
                host: host.to_ascii_lowercase(),
                wildcard,
                port,
            });
        }
        Ok(BackendHosts { patterns: out })
    }

    /// Whether a list was given (an empty one allows any host but the always-refused ones).
    pub fn is_restricted(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Check an S3 endpoint URL (`http(s)://host[:port][/…]`).
    pub fn check_url(&self, endpoint: &str) -> Result<(), String> {
        let url = url::Url::parse(endpoint).map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?;
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("`{endpoint}` names no host")),
        };
        self.check_host(&host, url.port_or_known_default())
    }

    /// Check every host of a MongoDB connection string (a seed list, or the `+srv` name).
    pub fn check_mongo_uri(&self, uri: &str) -> Result<(), String> {
        use mongodb::options::{ConnectionString, HostInfo, ServerAddress};
        // The URI holds a password: the parser's message could quote it, so it is not repeated.
        let parsed = ConnectionString::parse(uri).map_err(|_| "the MongoDB URI does not parse".to_owned())?;
        match parsed.host_info {
            HostInfo::DnsRecord(name) => self.check_host(&name, None),
            HostInfo::HostIdentifiers(hosts) => hosts.iter().try_for_each(|h| match h {
                ServerAddress::Tcp { host, port } => self.check_host(host, Some(port.unwrap_or(27017))),
                #[cfg(unix)]
                ServerAddress::Unix { .. } => Err("a MongoDB Unix socket is not reachable from a pod".to_owned()),
                _ => Err("an unsupported MongoDB address".to_owned()),
            }),
            _ => Err("an unsupported MongoDB host list".to_owned()),
        }
    }

    /// `port` is None for names whose port comes from DNS (a `+srv` record): only patterns
    /// without a port admit them.
    fn check_host(&self, host: &str, port: Option<u16>) -> Result<(), String> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let shown = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        if self.patterns.iter().any(|p| p.admits(&host, port)) {
            return Ok(());
        }
        if self.is_restricted() {
            return Err(format!(
                "host {shown} is not in the operator's allowed backend hosts (--allowed-backend-hosts; chart value \
                 operator.allowedBackendHosts); ask the cluster admin to add it"
            ));
        }
        if always_refused(&host) {
            return Err(format!(
                "host {shown} is a link-local or cloud metadata address, never a backend; a cluster admin may allow it \
                 explicitly with --allowed-backend-hosts"
            ));
        }
        Ok(())
    }
}

impl Pattern {
    fn admits(&self, host: &str, port: Option<u16>) -> bool {
        let host_ok = if self.wildcard {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
        } else {
            host == self.host
        };
        host_ok && (self.port.is_none() || self.port == port)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address.
fn split_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    if s.parse::<IpAddr>().is_ok() {
        return Some((s, None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

fn always_refused(host: &str) -> bool {
    if METADATA_HOSTS.contains(&host) {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_link_local(),
        // fe80::/10, and AWS's IPv6 metadata address fd00:ec2::254.
        Ok(IpAddr::V6(ip)) => (ip.segments()[0] & 0xffc0) == 0xfe80 || ip.segments()[..2] == [0xfd00, 0x0ec2],
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_list_allows_any_host_but_metadata_and_link_local() {
        let any = BackendHosts::default();
        assert!(any.check_url("http://minio.storage.svc:9000").is_ok());
        assert!(any.check_url("https://s3.eu-west-1.amazonaws.com").is_ok());
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://metadata.google.internal/computeMetadata",
            "http://[fe80::1]:9000",
            "http://[fd00:ec2::254]",
        ] {
            let err = any.check_url(bad).unwrap_err();
            assert!(err.contains("link-local or cloud metadata"), "{bad}: {err}");
        }
        assert!(any.check_mongo_uri("mongodb://u:p@169.254.169.254:27017/").is_err());
    }

    #[test]
    fn a_list_admits_exact_hosts_subdomains_and_ports() {
        let hosts = BackendHosts::parse(&[
            "minio.storage.svc:9000",
            "*.svc.cluster.local",
            "10.0.0.7",
            "[fd00::1]:27017",
        ])
        .unwrap();
        assert!(hosts.check_url("http://minio.storage.svc:9000").is_ok());
        assert!(
            hosts.check_url("http://minio.storage.svc:9001").is_err(),
            "another port"
        );
        assert!(hosts.check_url("https://s3.data.svc.cluster.local/bucket").is_ok());
        assert!(
            hosts.check_url("https://svc.cluster.local").is_err(),
            "*.x needs a subdomain"
        );
        assert!(
            hosts.check_url("https://evilsvc.cluster.local").is_err(),
            "a suffix is matched by label"
        );
        assert!(hosts.check_url("http://10.0.0.7:9000").is_ok());
        assert!(hosts.check_url("http://kubernetes.default:443").is_err());
        let err = hosts.check_url("http://attacker.example").unwrap_err();
        assert!(
            err.contains("attacker.example:80") && err.contains("--allowed-backend-hosts"),
            "{err}"
        );
        // An explicitly listed metadata address is the admin's choice.
        assert!(
            BackendHosts::parse(&["169.254.169.254"])
                .unwrap()
                .check_url("http://169.254.169.254")
                .is_ok()
        );
    }

    #[test]
    fn every_host_of_a_mongo_uri_is_checked_and_the_password_never_shown() {
        let hosts = BackendHosts::parse(&["*.mongo.svc", "[fd00::1]:27017"]).unwrap();
        assert!(
            hosts
                .check_mongo_uri("mongodb://u:p@a.mongo.svc,b.mongo.svc:27018/?replicaSet=rs0")
                .is_ok()
        );
        assert!(hosts.check_mongo_uri("mongodb://[fd00::1]:27017/").is_ok());
        let err = hosts
            .check_mongo_uri("mongodb://u:s3cret@a.mongo.svc,evil.example/")
            .unwrap_err();
        assert!(err.contains("evil.example:27017") && !err.contains("s3cret"), "{err}");
        // `+srv`: the port comes from DNS, so only a pattern without a port admits the name.
        assert!(hosts.check_mongo_uri("mongodb+srv://u:p@cluster.mongo.svc/").is_ok());
        let err = hosts.check_mongo_uri("mongodb://u:s3cret@[not a uri").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern_named() {
        for bad in ["http://x", "a:notaport", "*.", "user@host"] {
            let err = BackendHosts::parse(&[bad]).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        assert!(!BackendHosts::parse(&["", " "]).unwrap().is_restricted());
    }
}

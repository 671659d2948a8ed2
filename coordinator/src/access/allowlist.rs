//! Which destinations the coordinator may call: branch URLs, check-backs and HTTP steps.
//!
//! Rules, from configuration (`allow_destinations`):
//! - a host name, `pay.example.com`, or every name under a domain, `*.example.com`;
//! - an address or CIDR range, `10.1.2.3`, `10.0.0.0/8`, `fd00::/8`;
//! - a URL prefix, `https://pay.example.com/api/` (scheme, host and port equal, path under).
//!
//! A URL is checked twice. When it is registered (and again before each call) its text must
//! match a rule: a name or prefix rule for a host name, any rule for an address written in
//! the URL. Before each call the addresses the name resolves to are checked too, so that a
//! name cannot point the coordinator somewhere the rules do not allow. Loopback addresses are
//! called only when a rule lists them by address (a range holding them, or a URL prefix
//! written with the address), link-local and cloud metadata addresses only when a rule lists
//! them by address within their range, even with `allow_all_destinations`: a name rule never
//! lets a name lead there.
//! Redirects are never followed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// One rule of the allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name, lower case.
    Host(String),
    /// Every name ending in `.suffix` (written `*.suffix`), lower case.
    Domain(String),
    /// An address range.
    Net(Net),
    /// A URL prefix.
    Prefix(Url),
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    bits: u8,
}

impl Net {
    fn new(addr: IpAddr, bits: u8) -> Self {
        Self {
            addr: addr.to_canonical(),
            bits,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Whether every address of `self` is in `outer`.
    fn within(&self, outer: &Self) -> bool {
        self.bits >= outer.bits && outer.contains(self.addr)
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// Ranges never called unless a rule lists them by address: link-local (which holds most
/// clouds' metadata service), other metadata services, and "this host" addresses.
const GUARDED: [(&str, &str); 6] = [
    (
        "169.254.0.0/16",
        "a link-local address (cloud metadata services live there)",
    ),
    ("fe80::/10", "a link-local address"),
    ("100.100.100.200/32", "a cloud metadata address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("::/128", "an unspecified address"),
];

fn guarded(ip: IpAddr) -> Option<(Net, &'static str)> {
    static RANGES: std::sync::LazyLock<Vec<(Net, &'static str)>> = std::sync::LazyLock::new(|| {
        GUARDED
            .iter()
            .filter_map(|(net, why)| Some((parse_net(net).ok()?, *why)))
            .collect()
    });
    RANGES.iter().find(|(net, _)| net.contains(ip)).copied()
}

fn parse_net(text: &str) -> Result<Net, String> {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("'{}' is not an address", addr.escape_default()))?;
    let addr = addr.to_canonical();
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
            format!(
                "'/{}' is not a prefix length of 0 to {max}",
                b.escape_default()
            )
        })?,
    };
    Ok(Net::new(addr, bits))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

impl Rule {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.contains("://") {
            let url = Url::parse(text)
                .map_err(|e| format!("'{}' is not a URL: {e}", text.escape_default()))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!(
                    "'{}' must be an http or https URL with a host",
                    text.escape_default()
                ));
            }
            if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
                return Err(format!(
                    "'{}' must not carry a user name, password or query",
                    text.escape_default()
                ));
            }
            return Ok(Self::Prefix(url));
        }
        if text.parse::<IpAddr>().is_ok() || text.contains('/') || text.contains(':') {
            return parse_net(text).map(Self::Net);
        }
        let lower = text.to_ascii_lowercase();
        if let Some(domain) = lower.strip_prefix("*.") {
            if valid_name(domain) {
                return Ok(Self::Domain(domain.to_owned()));
            }
        } else if valid_name(&lower) {
            return Ok(Self::Host(lower));
        }
        Err(format!(
            "'{}' is neither a host name, '*.domain', an address, a CIDR range nor an http(s) URL prefix",
            text.escape_default()
        ))
    }

    /// Whether this rule names `host` (a name rule, or a prefix rule on that host).
    fn names(&self, host: &str) -> bool {
        match self {
            Self::Host(h) => h == host,
            Self::Domain(d) => {
                host.len() > d.len() + 1 && host.ends_with(d.as_str()) && {
                    host.as_bytes()[host.len() - d.len() - 1] == b'.'
                }
            }
            Self::Prefix(p) => p.host_str() == Some(host),
            Self::Net(_) => false,
        }
    }

    /// Whether this is a URL prefix written with the address `ip`.
    fn written_with(&self, ip: IpAddr) -> bool {
        let Self::Prefix(p) = self else {
            return false;
        };
        let host = p.host_str().unwrap_or_default();
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|h| h.to_canonical() == ip)
    }

    fn matches_url(&self, url: &Url, host: &str) -> bool {
        match self {
            Self::Prefix(p) => {
                p.scheme() == url.scheme()
                    && p.host_str() == Some(host)
                    && p.port_or_known_default() == url.port_or_known_default()
                    && url.path().starts_with(p.path())
            }
            other => other.names(host),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(h) => f.write_str(h),
            Self::Domain(d) => write!(f, "*.{d}"),
            Self::Net(n) => n.fmt(f),
            Self::Prefix(p) => f.write_str(p.as_str()),
        }
    }
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The destinations this coordinator may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    rules: Vec<Rule>,
    allow_all: bool,
}

impl Allowlist {
    /// An allowlist of `rules`; `allow_all` lets every destination through except guarded
    /// addresses.
    ///
    /// # Errors
    /// The first rule that does not parse, and why.
    pub fn new(rules: &[String], allow_all: bool) -> Result<Self, String> {
        let rules = rules
            .iter()
            .map(|r| Rule::parse(r).map_err(|e| format!("allow_destinations: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules, allow_all })
    }

    /// Loopback only: `localhost`, 127.0.0.0/8 and ::1.
    pub fn loopback() -> Self {
        Self {
            rules: vec![
                Rule::Host("localhost".to_owned()),
                Rule::Net(Net::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8)),
                Rule::Net(Net::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128)),
            ],
            allow_all: false,
        }
    }

    /// The rules, as configured.
    pub fn describe(&self) -> String {
        if self.allow_all {
            return "every destination (allow_all_destinations)".to_owned();
        }
        let rules: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
        rules.join(", ")
    }

    /// Checks a URL's text: registration does this, and every call before it resolves.
    ///
    /// # Errors
    /// [`Refused`] naming the URL and the rule it breaks.
    pub fn check_url(&self, url: &str) -> Result<(), Refused> {
        let refused = |why: String| {
            Refused(format!(
                "destination '{}' is not allowed: {why}",
                url.escape_default()
            ))
        };
        let parsed = Url::parse(url).map_err(|e| refused(format!("not a URL ({e})")))?;
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            return Err(refused("it has no host".to_owned()));
        };
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return self.check_address(&parsed, ip).map_err(refused);
        }
        let host = host.to_ascii_lowercase();
        if self.allow_all || self.rules.iter().any(|r| r.matches_url(&parsed, &host)) {
            return Ok(());
        }
        Err(refused(format!(
            "host '{host}' matches no rule of allow_destinations ({})",
            self.describe()
        )))
    }

    fn check_address(&self, url: &Url, ip: IpAddr) -> Result<(), String> {
        let host = url.host_str().unwrap_or_default();
        // A URL prefix written with this very address lists it by address.
        let listed = self.rules.iter().any(|r| r.matches_url(url, host));
        self.address_allowed(listed, ip)
    }

    /// Whether the coordinator may connect to `ip`. `named` says a rule allowed the host it
    /// belongs to: a name or prefix rule for a name, a prefix rule written with the address
    /// for an address.
    fn address_allowed(&self, named: bool, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        let by_address = named && self.rules.iter().any(|r| r.written_with(ip));
        let nets = || {
            self.rules.iter().filter_map(|r| match r {
                Rule::Net(n) => Some(n),
                _ => None,
            })
        };
        if let Some((range, why)) = guarded(ip) {
            if by_address || nets().any(|n| n.contains(ip) && n.within(&range)) {
                return Ok(());
            }
            return Err(format!(
                "{ip} is {why}, refused unless allow_destinations lists it by address"
            ));
        }
        if ip.is_loopback() {
            if by_address || nets().any(|n| n.contains(ip)) {
                return Ok(());
            }
            return Err(format!(
                "{ip} is a loopback address, which no address range of allow_destinations ({}) holds",
                self.describe()
            ));
        }
        if self.allow_all || named || nets().any(|n| n.contains(ip)) {
            return Ok(());
        }
        Err(format!(
            "{ip} matches no rule of allow_destinations ({})",
            self.describe()
        ))
    }

    /// Resolves `host` and keeps the addresses this allowlist lets the coordinator connect
    /// to.
    ///
    /// # Errors
    /// The name does not resolve, or none of its addresses is allowed (naming them).
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, Refused> {
        let host = host.to_ascii_lowercase();
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| Refused(format!("cannot resolve '{host}': {e}")))?
            .collect();
        let named = self.rules.iter().any(|r| r.names(&host));
        let mut allowed = Vec::with_capacity(found.len());
        let mut why = Vec::new();
        for addr in found {
            match self.address_allowed(named, addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(e) => why.push(e),
            }
        }
        if allowed.is_empty() {
            return Err(Refused(format!(
                "no address of '{host}' may be called: {}",
                if why.is_empty() {
                    "it resolves to none".to_owned()
                } else {
                    why.join("; ")
                }
            )));
        }
        Ok(allowed)
    }
}

/// The resolver the coordinator's HTTP client connects through: names resolve only to
/// allowed addresses.
#[derive(Debug, Clone)]
pub struct AllowlistResolver(pub Arc<Allowlist>);

impl reqwest::dns::Resolve for AllowlistResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let list = self.0.clone();
        Box::pin(async move {
            let addrs = list.resolve(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> Allowlist {
        let rules: Vec<String> = rules.iter().map(|r| (*r).to_owned()).collect();
        Allowlist::new(&rules, false).unwrap()
    }

    fn refusal(l: &Allowlist, url: &str) -> String {
        l.check_url(url).unwrap_err().to_string()
    }

    #[test]
    fn the_loopback_default_allows_loopback_only() {
        let l = Allowlist::loopback();
        for ok in [
            "http://127.0.0.1:8080/confirm",
            "http://127.9.9.9/x",
            "http://localhost:1/x",
            "http://LOCALHOST/x",
            "http://[::1]:80/x",
        ] {
            assert!(l.check_url(ok).is_ok(), "{ok}");
        }
        let why = refusal(&l, "http://pay.example.com/confirm");
        assert!(
            why.contains("'http://pay.example.com/confirm'") && why.contains("pay.example.com"),
            "{why}"
        );
        assert!(refusal(&l, "http://10.0.0.1/x").contains("10.0.0.1 matches no rule"));
    }

    #[test]
    fn names_domains_ranges_and_prefixes_match_as_written() {
        let l = list(&[
            "pay.example.com",
            "*.svc.internal",
            "10.0.0.0/8",
            "https://api.partner.example/v1/",
        ]);
        for ok in [
            "http://pay.example.com/x",
            "http://PAY.example.com:8080/x",
            "http://a.svc.internal/x",
            "http://a.b.svc.internal/x",
            "http://10.200.1.1:9000/x",
            "https://api.partner.example/v1/confirm",
            "https://api.partner.example:443/v1/confirm",
        ] {
            assert!(l.check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://svc.internal/x",
            "http://evilsvc.internal/x",
            "http://pay.example.com.evil.net/x",
            "http://11.0.0.1/x",
            "http://api.partner.example/v1/confirm",
            "https://api.partner.example/v2/confirm",
            "https://api.partner.example:8443/v1/confirm",
            "https://api.partner.example/v1/../admin",
            "https://api.partner.example@evil.net/v1/x",
        ] {
            assert!(l.check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_and_link_local_need_a_rule_by_address() {
        let all = Allowlist::new(&[], true).unwrap();
        assert!(all.check_url("http://pay.example.com/x").is_ok());
        let why = refusal(&all, "http://169.254.169.254/latest/meta-data/");
        assert!(
            why.contains("link-local") && why.contains("by address"),
            "{why}"
        );
        assert!(all.check_url("http://[::ffff:169.254.169.254]/x").is_err());
        assert!(all.check_url("http://100.100.100.200/x").is_err());
        assert!(all.check_url("http://0.0.0.0:80/x").is_err());
        assert!(list(&["0.0.0.0/0"])
            .check_url("http://169.254.169.254/")
            .is_err());
        assert!(list(&["169.254.169.254"])
            .check_url("http://169.254.169.254/")
            .is_ok());
        assert!(list(&["169.254.0.0/16"])
            .check_url("http://169.254.1.1/")
            .is_ok());
        let prefix = list(&["http://169.254.169.254/latest/"]);
        assert!(prefix.check_url("http://169.254.169.254/latest/x").is_ok());
        assert!(prefix.check_url("http://169.254.169.254/other").is_err());
        let loopback = list(&["http://127.0.0.1:8080/api/"]);
        assert!(loopback
            .check_url("http://127.0.0.1:8080/api/confirm")
            .is_ok());
        assert!(loopback
            .check_url("http://127.0.0.1:8081/api/confirm")
            .is_err());
    }

    #[test]
    fn loopback_needs_a_range_even_for_named_hosts() {
        let l = list(&["pay.example.com"]);
        assert!(l
            .address_allowed(true, "127.0.0.1".parse().unwrap())
            .is_err());
        assert!(l.address_allowed(true, "10.1.1.1".parse().unwrap()).is_ok());
        assert!(l
            .address_allowed(false, "10.1.1.1".parse().unwrap())
            .is_err());
        let why = l
            .address_allowed(true, "169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert!(why.contains("by address"), "{why}");
    }

    #[tokio::test]
    async fn names_resolve_only_to_allowed_addresses() {
        let l = Allowlist::loopback();
        let addrs = l.resolve("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        let none = list(&["localhost"]).resolve("localhost").await.unwrap_err();
        assert!(none.to_string().contains("loopback"), "{none}");
    }

    #[test]
    fn bad_rules_are_named() {
        let rules = ["10.0.0.0/33".to_owned()];
        let e = Allowlist::new(&rules, false).unwrap_err();
        assert!(e.contains("allow_destinations") && e.contains("/33"), "{e}");
        let e = Allowlist::new(&["ftp://x/".to_owned()], false).unwrap_err();
        assert!(e.contains("http or https"), "{e}");
        let e = Allowlist::new(&["bad name!".to_owned()], false).unwrap_err();
        assert!(e.contains("neither"), "{e}");
    }
}

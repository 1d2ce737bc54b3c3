//! What the index can answer of a tcpdump filter: a part of tcpdump's syntax parsed into a
//! predicate over an index range ("can a frame here match?"). libpcap's program stays the
//! final judge of every packet; this only prunes ranges, and only where it is sure:
//!
//! - understood: `host`, `net` (CIDR), `port`, `portrange` with `src`/`dst`, the protocol
//!   qualifiers `ip`, `ip6`, `arp`, `rarp`, `tcp`, `udp`, `sctp`, the protocol names `ip`,
//!   `ip6`, `arp`, `rarp`, `tcp`, `udp`, `sctp`, `icmp`, `icmp6`, `igmp`, `ip proto N`,
//!   `ip6 proto N`, `proto N`, joined by `and`/`or`/`not` (`&&`, `||`, `!`) and parentheses,
//!   and a bare value after `and`/`or`/`not` taking the previous primitive's qualifiers
//!   (`host a or b`);
//! - anything else (`vlan`, `ether`, `less`, byte offsets, names to resolve, ...) makes the
//!   whole filter a time-only query: every range in the time range is read.
//!
//! As in libpcap, `and` and `or` have the same precedence and group from the left; `not`
//! binds tightest. Negations are pushed down to the primitives, and a negated primitive can
//! match anywhere (a range's sets say what is in it, not what all its frames are).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tapwire_formats::index::BlockRecord;
use tapwire_formats::index::keys::kind;

/// One question a range's sets can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    /// A frame of one of these [`kind`] bits.
    Kinds(u16),
    /// An IP protocol.
    Proto(u8),
    /// An IPv4 address in the range.
    V4(u32, u32),
    /// An IPv6 address in the range.
    V6(u128, u128),
    /// A port in the range.
    Ports(u16, u16),
}

/// A predicate over an index range, in negation normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pred {
    /// Can match anywhere.
    True,
    /// Each must be possible.
    All(Vec<Pred>),
    /// One must be possible.
    Any(Vec<Pred>),
    /// The range's sets must allow it.
    Atom(Atom),
}

impl Pred {
    /// Whether a frame of `range` may match. Never false for a range holding a frame the
    /// filter matches (the property test holds this against libpcap).
    pub fn may_match(&self, range: &BlockRecord) -> bool {
        if range.n_packets == 0 {
            return false;
        }
        // Frames the index did not read: anything may match.
        if range.kinds & kind::OTHER_LINK != 0 {
            return true;
        }
        self.eval(range)
    }

    fn eval(&self, r: &BlockRecord) -> bool {
        match self {
            Pred::True => true,
            Pred::All(v) => v.iter().all(|p| p.eval(r)),
            Pred::Any(v) => v.iter().any(|p| p.eval(r)),
            Pred::Atom(a) => match *a {
                Atom::Kinds(k) => r.kinds & k != 0,
                Atom::Proto(p) => r.protos().any_in(p.into(), p.into()),
                Atom::V4(lo, hi) => r.v4().any_in(lo.into(), hi.into()),
                Atom::V6(lo, hi) => r.v6().any_in(lo, hi),
                Atom::Ports(lo, hi) => r.ports().any_in(lo, hi),
            },
        }
    }

    fn negate(self) -> Pred {
        match self {
            Pred::True | Pred::Atom(_) => Pred::True,
            Pred::All(v) => Pred::Any(v.into_iter().map(Pred::negate).collect()),
            Pred::Any(v) => Pred::All(v.into_iter().map(Pred::negate).collect()),
        }
    }
}

/// What the index does with a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No filter: every range in the time range.
    Everything,
    /// Ranges where the predicate may hold.
    Index(Pred),
    /// A filter the index cannot answer; why, in a word.
    TimeOnly(String),
}

impl Plan {
    /// The plan for `filter` (already accepted by libpcap).
    pub fn of(filter: Option<&str>) -> Plan {
        let Some(f) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
            return Plan::Everything;
        };
        match Parser::new(f).and_then(|mut p| p.parse()) {
            Ok(pred) => Plan::Index(pred),
            Err(why) => Plan::TimeOnly(why),
        }
    }

    /// Whether a frame of `range` may pass the filter.
    pub fn may_match(&self, range: &BlockRecord) -> bool {
        match self {
            Plan::Index(p) => p.may_match(range),
            Plan::Everything | Plan::TimeOnly(_) => range.n_packets > 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let mut v = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'(' => {
                v.push(Tok::Open);
                i += 1;
            }
            b')' => {
                v.push(Tok::Close);
                i += 1;
            }
            b'!' if b.get(i + 1) != Some(&b'=') => {
                v.push(Tok::Not);
                i += 1;
            }
            b'&' if b.get(i + 1) == Some(&b'&') => {
                v.push(Tok::And);
                i += 2;
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                v.push(Tok::Or);
                i += 2;
            }
            c if c.is_ascii_alphanumeric() || matches!(c, b'.' | b':' | b'/' | b'-' | b'_') => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || matches!(b[i], b'.' | b':' | b'/' | b'-' | b'_'))
                {
                    i += 1;
                }
                v.push(match &s[start..i] {
                    "and" => Tok::And,
                    "or" => Tok::Or,
                    "not" => Tok::Not,
                    w => Tok::Word(w.to_string()),
                });
            }
            c => return Err(format!("{:?} is not read by the index", c as char)),
        }
    }
    Ok(v)
}

/// The qualifiers of a primitive, which a bare value after it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quals {
    proto: Option<Proto>,
    what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Ip,
    Ip6,
    Arp,
    Rarp,
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Host,
    Net,
    Port,
    Portrange,
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    /// The last primitive's qualifiers (`None` after one a bare value cannot follow).
    last: Option<Quals>,
}

impl Parser {
    fn new(s: &str) -> Result<Parser, String> {
        Ok(Parser {
            toks: tokens(s)?,
            at: 0,
            last: None,
        })
    }

    fn parse(&mut self) -> Result<Pred, String> {
        let p = self.expr()?;
        if self.at != self.toks.len() {
            return Err("unexpected text".into());
        }
        Ok(p)
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next_word(&mut self) -> Option<String> {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) => {
                self.at += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }

    /// term ((and|or) term)*, left to right with equal precedence.
    fn expr(&mut self) -> Result<Pred, String> {
        let mut acc = self.term()?;
        loop {
            match self.peek() {
                Some(Tok::And) => {
                    self.at += 1;
                    let rhs = self.term()?;
                    acc = Pred::All(vec![acc, rhs]);
                }
                Some(Tok::Or) => {
                    self.at += 1;
                    let rhs = self.term()?;
                    acc = Pred::Any(vec![acc, rhs]);
                }
                _ => return Ok(acc),
            }
        }
    }

    fn term(&mut self) -> Result<Pred, String> {
        match self.peek() {
            Some(Tok::Not) => {
                self.at += 1;
                Ok(self.term()?.negate())
            }
            Some(Tok::Open) => {
                self.at += 1;
                let p = self.expr()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err("unbalanced parenthesis".into());
                }
                self.at += 1;
                // A value after a parenthesised expression: not followed here.
                self.last = None;
                Ok(p)
            }
            Some(Tok::Word(_)) => self.primitive(),
            _ => Err("unexpected end".into()),
        }
    }

    fn primitive(&mut self) -> Result<Pred, String> {
        let first = self.next_word().ok_or("expected a primitive")?;
        // A bare value: the previous primitive's qualifiers.
        if looks_like_value(&first) {
            let q = self.last.ok_or("a value without qualifiers")?;
            return value_pred(q, &first);
        }
        if matches!(first.as_str(), "icmp" | "icmp6" | "igmp") {
            return Ok(self.protocol_name(&first));
        }
        let proto = match first.as_str() {
            "ip" => Some(Proto::Ip),
            "ip6" => Some(Proto::Ip6),
            "arp" => Some(Proto::Arp),
            "rarp" => Some(Proto::Rarp),
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        };
        let mut word = match proto {
            Some(_) => match self.peek() {
                Some(Tok::Word(_)) => self.next_word().unwrap_or_default(),
                // A protocol name on its own.
                _ => return Ok(self.protocol_name(&first)),
            },
            None => first,
        };
        // `ip proto 17`, `proto 17`.
        if word == "proto" {
            let n = self.next_word().ok_or("proto needs a number")?;
            let n: u8 = n.parse().map_err(|_| "a protocol name in `proto`")?;
            self.last = None;
            let kinds = match proto {
                None => kind::ETH_IPV4 | kind::RAW_IPV4 | kind::ETH_IPV6 | kind::RAW_IPV6,
                Some(Proto::Ip) => kind::ETH_IPV4 | kind::RAW_IPV4,
                Some(Proto::Ip6) => kind::ETH_IPV6 | kind::RAW_IPV6,
                _ => return Err("proto after a transport protocol".into()),
            };
            return Ok(Pred::All(vec![
                Pred::Atom(Atom::Kinds(kinds)),
                Pred::Atom(Atom::Proto(n)),
            ]));
        }
        // Direction (`src`, `dst`, `src or dst`, `src and dst`): a range answers all alike.
        let mut directed = false;
        if matches!(word.as_str(), "src" | "dst") {
            directed = true;
            if matches!(self.peek(), Some(Tok::Or | Tok::And))
                && matches!(self.toks.get(self.at + 1), Some(Tok::Word(w)) if w == "src" || w == "dst")
            {
                self.at += 2;
            }
            word = self.next_word().ok_or("a direction without a value")?;
        }
        let (what, value) = match word.as_str() {
            "host" => (What::Host, self.next_word()),
            "net" => (What::Net, self.next_word()),
            "port" => (What::Port, self.next_word()),
            "portrange" => (What::Portrange, self.next_word()),
            // `src 10.0.0.1`: a host.
            w if directed && w.parse::<IpAddr>().is_ok() => (What::Host, Some(word.clone())),
            w => return Err(format!("{w:?} is not read by the index")),
        };
        let value = value.ok_or("a qualifier without a value")?;
        let q = Quals { proto, what };
        let pred = value_pred(q, &value)?;
        self.last = Some(q);
        Ok(pred)
    }

    /// `tcp`, `ip`, `icmp` ... on their own.
    fn protocol_name(&mut self, name: &str) -> Pred {
        self.last = None;
        let ip4 = kind::ETH_IPV4 | kind::RAW_IPV4;
        let ip6 = kind::ETH_IPV6 | kind::RAW_IPV6;
        let proto = |n| Pred::Atom(Atom::Proto(n));
        match name {
            "ip" => Pred::Atom(Atom::Kinds(ip4)),
            "ip6" => Pred::Atom(Atom::Kinds(ip6)),
            "arp" | "rarp" => Pred::Atom(Atom::Kinds(kind::ETH_ARP)),
            "tcp" => proto(6),
            "udp" => proto(17),
            "sctp" => proto(132),
            "icmp" => proto(1),
            "icmp6" => proto(58),
            "igmp" => proto(2),
            _ => Pred::True,
        }
    }
}

/// Whether a word can be a host, net or port value.
fn looks_like_value(w: &str) -> bool {
    w.parse::<IpAddr>().is_ok()
        || w.parse::<u16>().is_ok()
        || w.contains('/')
        || (w.contains('-') && w.split('-').all(|p| p.parse::<u16>().is_ok()))
}

fn value_pred(q: Quals, value: &str) -> Result<Pred, String> {
    let ip4 = kind::ETH_IPV4 | kind::RAW_IPV4;
    let ip6 = kind::ETH_IPV6 | kind::RAW_IPV6;
    let family_ok = |v6: bool| match q.proto {
        None => true,
        Some(Proto::Ip | Proto::Arp | Proto::Rarp) => !v6,
        Some(Proto::Ip6) => v6,
        _ => false,
    };
    match q.what {
        What::Host => match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if family_ok(false) => {
                let a = u32::from(a);
                Ok(Pred::Atom(Atom::V4(a, a)))
            }
            Ok(IpAddr::V6(a)) if family_ok(true) => {
                let a = u128::from(a);
                Ok(Pred::Atom(Atom::V6(a, a)))
            }
            _ => Err(format!("host {value:?} is not an address the index reads")),
        },
        What::Net => {
            let (addr, len) = value.split_once('/').ok_or("a net without a /length")?;
            let len: u32 = len.parse().map_err(|_| "net length")?;
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(a))
                    if family_ok(false) && len <= 32 && addr.split('.').count() == 4 =>
                {
                    let a = u32::from(a);
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    Ok(Pred::Atom(Atom::V4(a & mask, (a & mask) | !mask)))
                }
                Ok(IpAddr::V6(a)) if family_ok(true) && len <= 128 => {
                    let a = u128::from(a);
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                    Ok(Pred::Atom(Atom::V6(a & mask, (a & mask) | !mask)))
                }
                _ => Err(format!("net {value:?} is not read by the index")),
            }
        }
        What::Port | What::Portrange => {
            let (lo, hi) = if q.what == What::Port {
                let p: u16 = value
                    .parse()
                    .map_err(|_| format!("port {value:?} by name"))?;
                (p, p)
            } else {
                let (a, b) = value.split_once('-').ok_or("portrange without -")?;
                let (a, b): (u16, u16) = (
                    a.parse().map_err(|_| "portrange by name")?,
                    b.parse().map_err(|_| "portrange by name")?,
                );
                (a.min(b), a.max(b))
            };
            let ports = Pred::Atom(Atom::Ports(lo, hi));
            let with = |p: u8| Pred::All(vec![Pred::Atom(Atom::Proto(p)), ports.clone()]);
            match q.proto {
                None => Ok(Pred::All(vec![
                    Pred::Atom(Atom::Kinds(ip4 | ip6)),
                    ports.clone(),
                ])),
                Some(Proto::Tcp) => Ok(with(6)),
                Some(Proto::Udp) => Ok(with(17)),
                Some(Proto::Sctp) => Ok(with(132)),
                Some(Proto::Ip) => Ok(Pred::All(vec![Pred::Atom(Atom::Kinds(ip4)), ports])),
                Some(Proto::Ip6) => Ok(Pred::All(vec![Pred::Atom(Atom::Kinds(ip6)), ports])),
                _ => Err("port of arp".into()),
            }
        }
    }
}

/// An IPv4 address as a number (for tests and callers).
pub fn v4(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// An IPv6 address as a number.
pub fn v6(a: Ipv6Addr) -> u128 {
    u128::from(a)
}

//! The host cache: supernodes this client has heard of, persisted in `--home`.
//!
//! Skype kept this list in `shared.xml`; Natter keeps a small text file, one
//! supernode per line, so a user can read and edit it:
//!
//! ```text
//! # natter host cache v2: addr last_seen_unix_ms rtt_ms failures transport tcp_addr
//! 198.51.100.10:443 1800000000000 12 0 quic -
//! 198.51.100.11:443 1800000000000 40 0 tcp 198.51.100.11:443
//! ```
//!
//! `transport` is the one the last successful join used (`quic`, `tcp`, or
//! `-` when never joined): a client behind a UDP-blocking firewall goes
//! straight to TLS over TCP next time. `tcp_addr` is the supernode's
//! TLS-over-TCP listener when it was announced (`-`: assume the QUIC
//! address's IP and port). Version-1 lines (the first four fields) are still read.
//!
//! At most [`MAX_ENTRIES`] are kept. The file is replaced atomically, mode
//! 0600, by [`natter_fsutil::write_private`], so a crash leaves either the old
//! or the new list, never a torn one. A line that does not parse is skipped and counted,
//! never fatal: a damaged cache must not stop a user from joining.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use natter_net::Transport;

/// Most entries kept (as in the Skype client).
pub const MAX_ENTRIES: usize = 200;
/// File name inside the home directory.
pub const FILE_NAME: &str = "hostcache.txt";
const HEADER: &str =
    "# natter host cache v2: addr last_seen_unix_ms rtt_ms failures transport tcp_addr";

/// What the cache knows about one supernode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub addr: SocketAddr,
    /// When it last answered or was last gossiped as alive (unix ms).
    pub last_seen_ms: i64,
    /// Round-trip time of the last successful join (0: unknown).
    pub rtt_ms: u32,
    /// Failed join attempts since the last success.
    pub failures: u32,
    /// The transport of the last successful join.
    pub transport: Option<Transport>,
    /// Its TLS-over-TCP listener, when announced.
    pub tcp: Option<SocketAddr>,
}

impl Entry {
    fn new(addr: SocketAddr, last_seen_ms: i64) -> Self {
        Self {
            addr,
            last_seen_ms,
            rtt_ms: 0,
            failures: 0,
            transport: None,
            tcp: None,
        }
    }

    /// Where to reach it over TLS on TCP: the announced listener, else the
    /// QUIC address's IP and port (deployments run both on 443).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp.unwrap_or(self.addr)
    }
}

/// Why the cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HostCacheError {
    #[error("host cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The in-memory host cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCache {
    entries: Vec<Entry>,
    /// Lines skipped when the file was loaded.
    skipped_lines: usize,
}

impl HostCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the file format; bad lines are skipped and counted.
    pub fn parse(text: &str) -> Self {
        let mut cache = Self::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Some(entry) => cache.upsert(entry),
                None => cache.skipped_lines += 1,
            }
        }
        cache.trim();
        cache
    }

    /// Loads `path`; a missing file is an empty cache.
    pub fn load(path: &Path) -> Result<Self, HostCacheError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new()),
            Err(source) => Err(HostCacheError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The file contents for this cache.
    pub fn render(&self) -> String {
        let mut text = String::from(HEADER);
        text.push('\n');
        for e in &self.entries {
            text.push_str(&format!(
                "{} {} {} {} {} {}\n",
                e.addr,
                e.last_seen_ms,
                e.rtt_ms,
                e.failures,
                e.transport.map_or("-", Transport::name),
                e.tcp.map_or("-".to_owned(), |a| a.to_string()),
            ));
        }
        text
    }

    /// Writes the cache to `path` atomically, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), HostCacheError> {
        natter_fsutil::write_private(path, self.render().as_bytes()).map_err(|e| {
            HostCacheError::Io {
                path: e.path,
                source: e.source,
            }
        })
    }

    /// STUN reflectors for `netcheck`: the best `n` cached supernodes, then
    /// `extra` (the bootstrap list). Supernodes serve STUN on their QUIC
    /// port + 1.
    pub fn stun_reflectors(&self, n: usize, extra: &[SocketAddr]) -> Vec<SocketAddr> {
        self.candidates(n)
            .into_iter()
            .chain(extra.iter().copied())
            .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
            .collect()
    }

    /// Lines skipped as unreadable when the cache was parsed.
    pub fn skipped_lines(&self) -> usize {
        self.skipped_lines
    }

    /// All entries, best first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether the cache has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `n` best supernodes to try: fewest recent failures, then most
    /// recently seen, then lowest RTT.
    pub fn candidates(&self, n: usize) -> Vec<SocketAddr> {
        self.entries.iter().take(n).map(|e| e.addr).collect()
    }

    /// The entry for `addr`, if known.
    pub fn get(&self, addr: SocketAddr) -> Option<&Entry> {
        self.entries.iter().find(|e| e.addr == addr)
    }

    /// Adds supernodes learned from a bootstrap list.
    pub fn learn(&mut self, addrs: impl IntoIterator<Item = SocketAddr>, now_ms: i64) {
        self.learn_with_tcp(addrs.into_iter().map(|a| (a, None)), now_ms);
    }

    /// Adds supernodes learned from gossip or a login reply, with their
    /// TLS-over-TCP listener when announced.
    pub fn learn_with_tcp(
        &mut self,
        nodes: impl IntoIterator<Item = (SocketAddr, Option<SocketAddr>)>,
        now_ms: i64,
    ) {
        for (addr, tcp) in nodes {
            match self.entries.iter_mut().find(|e| e.addr == addr) {
                Some(e) => {
                    e.last_seen_ms = e.last_seen_ms.max(now_ms);
                    if tcp.is_some() {
                        e.tcp = tcp;
                    }
                }
                None => self.entries.push(Entry {
                    tcp,
                    ..Entry::new(addr, now_ms)
                }),
            }
        }
        self.trim();
    }

    /// A join through `addr` over `transport` succeeded after `rtt_ms`.
    pub fn record_success(
        &mut self,
        addr: SocketAddr,
        transport: Transport,
        rtt_ms: u32,
        now_ms: i64,
    ) {
        let tcp = self.get(addr).and_then(|e| e.tcp);
        self.upsert(Entry {
            addr,
            last_seen_ms: now_ms,
            rtt_ms,
            failures: 0,
            transport: Some(transport),
            tcp,
        });
        self.trim();
    }

    /// A join through `addr` failed.
    pub fn record_failure(&mut self, addr: SocketAddr) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.addr == addr) {
            e.failures = e.failures.saturating_add(1);
        }
        self.trim();
    }

    fn upsert(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|e| e.addr == entry.addr) {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    /// Sorts best first and drops the worst beyond [`MAX_ENTRIES`].
    fn trim(&mut self) {
        self.entries.sort_by(|a, b| {
            a.failures
                .cmp(&b.failures)
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
                .then(rtt_key(a).cmp(&rtt_key(b)))
                .then(a.addr.cmp(&b.addr))
        });
        self.entries.truncate(MAX_ENTRIES);
    }
}

/// Unknown RTT sorts after every measured one.
fn rtt_key(e: &Entry) -> u32 {
    if e.rtt_ms == 0 { u32::MAX } else { e.rtt_ms }
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut fields = line.split_whitespace();
    let mut entry = Entry {
        rtt_ms: 0,
        failures: 0,
        ..Entry::new(fields.next()?.parse().ok()?, fields.next()?.parse().ok()?)
    };
    entry.rtt_ms = fields.next()?.parse().ok()?;
    entry.failures = fields.next()?.parse().ok()?;
    // Version 2 adds two fields; a version-1 line ends here.
    if let Some(transport) = fields.next() {
        entry.transport = match transport {
            "quic" => Some(Transport::Quic),
            "tcp" => Some(Transport::Tls),
            "-" => None,
            _ => return None,
        };
        entry.tcp = match fields.next()? {
            "-" => None,
            addr => Some(addr.parse().ok()?),
        };
    }
    fields.next().is_none().then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 30_000 + i))
    }

    #[test]
    fn round_trips_through_its_file_format() {
        let mut cache = HostCache::new();
        cache.learn([addr(1), addr(2)], 1_000);
        cache.learn_with_tcp([(addr(3), Some(addr(443)))], 1_500);
        cache.record_success(addr(2), Transport::Quic, 15, 2_000);
        cache.record_success(addr(3), Transport::Tls, 30, 2_000);
        let back = HostCache::parse(&cache.render());
        assert_eq!(back, cache);
        assert_eq!(back.candidates(1), vec![addr(2)]);
        let e = back.get(addr(3)).unwrap();
        assert_eq!(
            e.transport,
            Some(Transport::Tls),
            "the working transport is kept"
        );
        assert_eq!(e.tcp_addr(), addr(443));
        assert_eq!(back.get(addr(1)).unwrap().tcp_addr(), addr(1));
    }

    #[test]
    fn version_one_files_are_still_read() {
        let text =
            "# natter host cache v1: addr last_seen_unix_ms rtt_ms failures\n127.0.0.1:1 5 9 0\n";
        let cache = HostCache::parse(text);
        assert_eq!(cache.skipped_lines(), 0);
        let e = cache.get(addr_of("127.0.0.1:1")).unwrap();
        assert_eq!((e.rtt_ms, e.transport, e.tcp), (9, None, None));
    }

    fn addr_of(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn damaged_lines_are_skipped_not_fatal() {
        let text = format!(
            "{HEADER}\n127.0.0.1:1 5 0 0\ngarbage\n127.0.0.1:2 x 0 0\n127.0.0.1:3 5 0 0 extra -\n127.0.0.1:4 5 0 0 tcp nowhere\n127.0.0.1:5 5 0 0 quic - more\n"
        );
        let cache = HostCache::parse(&text);
        assert_eq!(cache.entries().len(), 1);
        assert_eq!(cache.skipped_lines(), 5);
    }

    #[test]
    fn failing_nodes_sink_and_the_cache_is_bounded() {
        let mut cache = HostCache::new();
        cache.learn((0..250).map(addr), 1_000);
        assert_eq!(cache.entries().len(), MAX_ENTRIES);
        let best = cache.candidates(1)[0];
        cache.record_failure(best);
        assert_ne!(cache.candidates(1)[0], best);
        assert_eq!(cache.entries().last().map(|e| e.addr), Some(best));
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("natter-hc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert!(HostCache::load(&path).unwrap().is_empty());
        let mut cache = HostCache::new();
        cache.learn([addr(7)], 42);
        cache.save(&path).unwrap();
        assert_eq!(HostCache::load(&path).unwrap(), cache);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "no temporary file left");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stun_reflectors_are_the_best_nodes_then_bootstrap_one_port_up() {
        let mut cache = HostCache::new();
        cache.learn([addr(1), addr(2), addr(3)], 1_000);
        cache.record_success(addr(2), Transport::Quic, 5, 2_000);
        let boot = SocketAddr::from(([192, 0, 2, 1], 443));
        let got = cache.stun_reflectors(2, &[boot]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], SocketAddr::new(addr(2).ip(), addr(2).port() + 1));
        assert_eq!(got[2], SocketAddr::from(([192, 0, 2, 1], 444)));
        assert!(HostCache::new().stun_reflectors(4, &[]).is_empty());
    }
}

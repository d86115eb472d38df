//! NAT types and their nftables recipes (ported from `shared/natlab/natlab.sh`,
//! see `shared/guide/NAT-LAB.md`), and link impairments.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The NAT (or firewall) a client sits behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// No NAT, no filter: the host has a public address routed by its router.
    Open,
    /// Endpoint-independent mapping and filtering (EIM/EIF).
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering (EIM/ADF).
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (EIM/APDF).
    PortRestricted,
    /// Address-and-port-dependent mapping and filtering (APDM/APDF).
    Symmetric,
    /// No UDP at all; only TCP to ports 80 and 443 may leave (behind a port-restricted NAT).
    UdpBlocked,
    /// Address-and-port-dependent mapping and filtering like
    /// [`NatType::Symmetric`], but each new UDP mapping takes the next public
    /// port (a global counter: previous mapping + 1), as many real symmetric
    /// NATs did: the ports it will pick next can be predicted. Not in the
    /// default matrix ([`NatType::ALL`]); see [`NatType::EXTRA`].
    SymmetricSeq,
}

impl NatType {
    /// Every type, in matrix order.
    pub const ALL: [NatType; 6] = [
        NatType::Open,
        NatType::FullCone,
        NatType::AddressRestricted,
        NatType::PortRestricted,
        NatType::Symmetric,
        NatType::UdpBlocked,
    ];

    /// Types the lab also builds but the default 6x6 matrix leaves out
    /// (selectable with `--cells`, e.g. `port-restricted:symmetric-seq`).
    pub const EXTRA: [NatType; 1] = [NatType::SymmetricSeq];

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            NatType::Open => "open",
            NatType::FullCone => "full-cone",
            NatType::AddressRestricted => "address-restricted",
            NatType::PortRestricted => "port-restricted",
            NatType::Symmetric => "symmetric",
            NatType::UdpBlocked => "udp-blocked",
            NatType::SymmetricSeq => "symmetric-seq",
        }
    }

    /// The class a conference ranks this NAT as
    /// (`natter_proto::conference::NatClass`); a sequential symmetric NAT
    /// counts as symmetric (a conference does not predict ports).
    pub fn conference_class(self) -> natter_proto::conference::NatClass {
        use natter_proto::conference::NatClass;
        match self {
            NatType::Open => NatClass::Open,
            NatType::FullCone => NatClass::FullCone,
            NatType::AddressRestricted => NatClass::AddressRestricted,
            NatType::PortRestricted => NatClass::PortRestricted,
            NatType::Symmetric | NatType::SymmetricSeq => NatClass::Symmetric,
            NatType::UdpBlocked => NatClass::UdpBlocked,
        }
    }

    /// True if the type maps endpoint-independently (open counts: no mapping at all).
    pub fn endpoint_independent_mapping(self) -> bool {
        !matches!(
            self,
            NatType::Symmetric | NatType::SymmetricSeq | NatType::UdpBlocked
        )
    }
}

impl fmt::Display for NatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NatType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = match s {
            "open" => NatType::Open,
            "full-cone" | "full" => NatType::FullCone,
            "address-restricted" | "addr" => NatType::AddressRestricted,
            "port-restricted" | "port" => NatType::PortRestricted,
            "symmetric" | "sym" => NatType::Symmetric,
            "udp-blocked" | "fw" => NatType::UdpBlocked,
            "symmetric-seq" | "sym-seq" => NatType::SymmetricSeq,
            _ => {
                return Err(format!(
                    "unknown NAT type `{s}` (open, full-cone, address-restricted, port-restricted, symmetric, udp-blocked, symmetric-seq)"
                ));
            }
        };
        Ok(t)
    }
}

/// The first public UDP port of a [`NatType::SymmetricSeq`] router.
pub const SEQ_BASE: u16 = 20_000;
/// How many ports its counter runs through before it starts again (a
/// mapping's port comes back after this many new UDP flows).
pub const SEQ_PORTS: u16 = 1_024;

/// The nft script (for `nft -f -`) of a router of type `nat` whose wan address
/// is `wan_ip` and whose LAN is `lan_cidr`; dynamic NAT state (maps, sets)
/// lives `map_timeout_s` seconds after its last use. `None` for
/// [`NatType::Open`], which has no NAT table at all.
///
/// The router's interfaces are called `wan0` and `lan0`.
pub fn ruleset(nat: NatType, wan_ip: &str, lan_cidr: &str, map_timeout_s: u32) -> Option<String> {
    let to = format!("{map_timeout_s}s");
    let script = match nat {
        NatType::Open => return None,
        NatType::FullCone | NatType::AddressRestricted => cone_ruleset(nat, wan_ip, lan_cidr, &to),
        NatType::PortRestricted
        | NatType::Symmetric
        | NatType::SymmetricSeq
        | NatType::UdpBlocked => {
            // Plain masquerade is endpoint-independent (caveat 2); fully-random
            // gives a new port per flow = APDM. The sequential symmetric NAT
            // SNATs every new UDP flow (the nat chain sees only a flow's first
            // packet) to the next port of a counter: APDM with predictable
            // ports (20000, 20001, ... then round again); TCP is masqueraded.
            // The counter goes through a map: `numgen ... offset` straight
            // into the port lands in host byte order (20001 became 8526).
            let masq = match nat {
                NatType::Symmetric => "masquerade fully-random".to_owned(),
                NatType::SymmetricSeq => {
                    let ports = (0..SEQ_PORTS)
                        .map(|i| format!("{i} : {}", SEQ_BASE + i))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!(
                        "meta l4proto udp snat to {wan_ip} : numgen inc mod {SEQ_PORTS} map {{ {ports} }}\n\t\toifname \"wan0\" masquerade"
                    )
                }
                _ => "masquerade".to_owned(),
            };
            let fwd = if nat == NatType::UdpBlocked {
                r#"iifname "lan0" oifname "wan0" tcp dport { 80, 443 } accept"#
            } else {
                r#"iifname "lan0" oifname "wan0" accept"#
            };
            format!(
                r#"table ip natlab {{
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" {masq}
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		# unsolicited packets are dropped here, BEFORE their conntrack entry is
		# confirmed; otherwise the entry would steal the public port (caveat 3)
		iifname "wan0" drop
	}}
	chain forward {{
		# filtering = conntrack only: a reply must come from the exact remote ip:port (APDF)
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		{fwd}
	}}
}}
"#
            )
        }
    };
    // "flush ruleset" first: the script is the router's whole configuration
    // (impairments are loaded afterwards, in their own table).
    Some(format!("flush ruleset\n{script}"))
}

/// Full cone / address-restricted cone: explicit EIM state in two nft maps,
/// updated in a filter chain after SNAT (caveat 1), only for LAN sources (caveat 6).
fn cone_ruleset(nat: NatType, w: &str, lan: &str, to: &str) -> String {
    let (adf_set, adf_upd, inbound) = if nat == NatType::FullCone {
        (
            String::new(),
            String::new(),
            r#"iifname "wan0" oifname "lan0" meta l4proto udp ct status dnat accept   # EIF"#
                .to_owned(),
        )
    } else {
        (
            format!(
                "	# internal ip . port . remote ip that the internal endpoint has sent to (ADF state)
	set adf {{
		type ipv4_addr . inet_service . ipv4_addr
		flags dynamic,timeout
		timeout {to}
	}}"
            ),
            r#"iifname "lan0" oifname "wan0" update @adf { ip saddr . udp sport . ip daddr }   # every packet refreshes"#
                .to_owned(),
            r#"iifname "wan0" oifname "lan0" ct status dnat ip daddr . udp dport . ip saddr @adf accept   # ADF"#
                .to_owned(),
        )
    };
    format!(
        r#"table ip natlab {{
	# public UDP port (on {w}) -> internal ip . port : who owns a public port (inbound DNAT)
	map pub2int {{
		type inet_service : ipv4_addr . inet_service
		flags dynamic,timeout
		timeout {to}
	}}
	# internal ip . port -> public ip . port : reuse one mapping for every destination (EIM)
	map int2pub {{
		type ipv4_addr . inet_service : ipv4_addr . inet_service
		flags dynamic,timeout
		timeout {to}
	}}
{adf_set}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		# unsolicited UDP to a mapped public port goes to its internal owner
		iifname "wan0" ip daddr {w} dnat to udp dport map @pub2int
		# hairpinning: a LAN host sending to one of our public mappings
		iifname "lan0" ip daddr {w} dnat to udp dport map @pub2int
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		# EIM: an internal endpoint with a mapping keeps it for every destination
		oifname "wan0" snat to ip saddr . udp sport map @int2pub
		# otherwise (first packet, or TCP) port-preserving masquerade picks the mapping
		oifname "wan0" masquerade
		# hairpinned packets carry the sender's public mapping as source (RFC 4787 REQ-9)
		oifname "lan0" ip saddr {lan} ct status dnat snat to ip saddr . udp sport map @int2pub
		oifname "lan0" ip saddr {lan} ct status dnat masquerade
	}}
	chain track {{
		# after srcnat: "udp sport" is already the public port, and (unlike a nat chain,
		# which sees only the first packet of a flow) it sees every packet, so the
		# timeouts are refreshed while the mapping is in use.  Only LAN endpoints.
		type filter hook postrouting priority srcnat + 10; policy accept;
		oifname "wan0" ct direction original ct original ip saddr {lan} update @pub2int {{ udp sport : ct original ip saddr . ct original proto-src }} update @int2pub {{ ct original ip saddr . ct original proto-src : ip saddr . udp sport }}
		oifname "wan0" ct direction reply ct reply ip saddr {lan} update @pub2int {{ udp sport : ct reply ip saddr . ct reply proto-src }} update @int2pub {{ ct reply ip saddr . ct reply proto-src : ip saddr . udp sport }}
	}}
	chain input {{
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		iifname "wan0" drop
	}}
	chain forward {{
		type filter hook forward priority filter; policy drop;
		{adf_upd}
		ct state established,related accept
		iifname "lan0" oifname "wan0" accept
		{inbound}
		iifname "lan0" oifname "lan0" ct status dnat accept   # hairpin
	}}
}}
"#
    )
}

/// Link impairment of a router (both directions of its wan link).
///
/// Plain random loss (`loss2`) is an nftables rule in the router. Delay,
/// jitter and bursty loss need the userspace impairment link ("wire",
/// [`crate::wire`], decisions in [`crate::impair`]): the kernel here has no
/// netem (NAT-LAB.md, "Impairments without netem"). [`Lab::set_impairment`]
/// picks the mechanism ([`Impairment::needs_wire`]).
///
/// [`Lab::set_impairment`]: crate::lab::Lab::set_impairment
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impairment {
    /// Loss in percent per forwarded packet (0..=100), per direction.
    pub loss_pct: u8,
    /// Mean one-way delay added per direction, ms.
    pub delay_ms: u32,
    /// Delay spread: each packet gets `delay_ms +/- jitter_ms` (uniform).
    pub jitter_ms: u32,
    /// Mean length of a loss burst in packets (Gilbert-Elliott); 0 or 1 =
    /// independent losses.
    pub burst: u8,
}

impl Impairment {
    /// No impairment.
    pub const CLEAN: Impairment = Impairment {
        loss_pct: 0,
        delay_ms: 0,
        jitter_ms: 0,
        burst: 1,
    };

    /// The names [`Impairment::profile`] knows.
    pub const PROFILES: [&'static str; 5] = ["clean", "loss2", "wifi", "4g", "bad"];

    /// A named profile: `clean`; `loss2` (2 % random loss each way, nft);
    /// `wifi` (30 +/- 20 ms, 1 % loss in bursts of 2 on average), `4g`
    /// (60 +/- 30 ms, 2 % random loss), `bad` (120 +/- 60 ms, 5 % loss in
    /// bursts of 3): each way, on each router's link, through the wire.
    pub fn profile(name: &str) -> Result<Impairment, String> {
        let p = |loss_pct, delay_ms, jitter_ms, burst| Impairment {
            loss_pct,
            delay_ms,
            jitter_ms,
            burst,
        };
        match name {
            "clean" => Ok(Impairment::CLEAN),
            "loss2" => Ok(p(2, 0, 0, 1)),
            "wifi" => Ok(p(1, 30, 20, 2)),
            "4g" => Ok(p(2, 60, 30, 1)),
            "bad" => Ok(p(5, 120, 60, 3)),
            _ => Err(format!(
                "unknown profile `{name}` ({})",
                Impairment::PROFILES.join(", ")
            )),
        }
    }

    /// Whether this needs the userspace wire (delay, jitter or bursty loss)
    /// rather than an nft loss rule.
    pub fn needs_wire(&self) -> bool {
        self.delay_ms > 0 || self.jitter_ms > 0 || (self.burst > 1 && self.loss_pct > 0)
    }

    /// The wire's parameters for one direction.
    pub fn link_params(&self) -> crate::impair::LinkParams {
        crate::impair::LinkParams {
            delay_us: u64::from(self.delay_ms) * 1000,
            jitter_us: u64::from(self.jitter_ms.min(self.delay_ms)) * 1000,
            loss: f64::from(self.loss_pct.min(100)) / 100.0,
            burst: f64::from(self.burst.max(1)),
        }
    }

    /// The nft script installing this impairment's loss rule in its own
    /// table `ip nt_impair` (replacing an earlier one), or removing it when
    /// there is none (clean, or the wire does the loss).
    pub fn nft_script(&self) -> String {
        // "table" + "delete table" makes the script idempotent.
        let mut s = String::from("table ip nt_impair\ndelete table ip nt_impair\n");
        // with the wire, the wire does the loss too (one model, one count)
        if self.loss_pct > 0 && !self.needs_wire() {
            // numgen's range is 0..=99: 100 % loss is a plain drop
            let rule = if self.loss_pct >= 100 {
                "drop".to_owned()
            } else {
                format!("numgen random mod 100 < {} drop", self.loss_pct)
            };
            s.push_str(&format!(
                "table ip nt_impair {{
	chain forward {{
		type filter hook forward priority filter - 10; policy accept;
		{rule}
	}}
}}
"
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conference election predicts direct reachability from NAT
    /// classes (`NatClass::direct_with`); the lab expects paths by the same
    /// reasoning (`scenario::expected_path`). They must agree on every cell.
    #[test]
    fn the_conference_prediction_agrees_with_the_lab_expected_path() {
        for a in NatType::ALL {
            for b in NatType::ALL {
                let path = crate::scenario::expected_path(a, b);
                let direct = matches!(path, "direct" | "hole-punched");
                assert_eq!(
                    a.conference_class().direct_with(b.conference_class()),
                    direct,
                    "{a} x {b}: the lab expects {path}"
                );
            }
        }
    }
}

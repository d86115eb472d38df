//! `natter-decrypt --keylog FILE [--out LISTING] CAPTURE`: opens the SoM
//! datagrams of one's own calls in a pcap or pcapng capture with the key log
//! `NATTER_KEYLOG` wrote, and writes one line per decrypted datagram (see
//! [`natter_decrypt::Listing`]), then a summary per call direction on
//! stderr. Give the listing to the Wireshark dissector with
//! `-o natter.clear_file:LISTING` (docs/TRAFFIC.md).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use natter_decrypt::{Decryptor, Direction, Listing, parse_key_log, read_capture, udp_payload};

#[derive(Parser)]
#[command(
    name = "natter-decrypt",
    about = "Decrypt the SoM datagrams of your own Natter calls in a capture (key log: NATTER_KEYLOG)"
)]
struct Args {
    /// The key log the client wrote (NATTER_KEYLOG=FILE).
    #[arg(long)]
    keylog: PathBuf,
    /// Write the listing here instead of to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The capture (pcap or pcapng: tcpdump -w, tshark -w, Wireshark).
    capture: PathBuf,
}

/// What the summary counts per call direction.
#[derive(Default)]
struct Tally {
    by_function: BTreeMap<String, u64>,
    frame_numbers: Vec<u16>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("natter-decrypt: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let log = std::fs::read_to_string(&args.keylog)
        .with_context(|| format!("reading {}", args.keylog.display()))?;
    let directions = parse_key_log(&log)?;
    if directions.is_empty() {
        bail!(
            "{} has no NATTER_CALL lines (was NATTER_KEYLOG set for the call?)",
            args.keylog.display()
        );
    }
    let mut decryptor = Decryptor::new(directions);
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    writeln!(out, "{}", Listing::HEADER)?;
    let mut tallies: BTreeMap<(String, Direction), Tally> = BTreeMap::new();
    let mut unknown_links = 0u64;
    let mut write_error = None;
    read_capture(&args.capture, |packet| {
        let frame = packet.frame;
        let Some(link) = packet.link else {
            unknown_links += 1;
            return;
        };
        let Some(udp) = udp_payload(link, &packet.data) else {
            return;
        };
        let Some(d) = decryptor.open(udp.payload) else {
            return;
        };
        let tally = tallies
            .entry((hex::encode(d.call_id), d.direction))
            .or_default();
        *tally
            .by_function
            .entry(format!("{:?}", d.function))
            .or_default() += 1;
        if let Some((number, _)) = d.media_frame() {
            tally.frame_numbers.push(number);
        }
        if let Err(e) = writeln!(out, "{}", Listing::line(frame, &udp, &d)) {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing the listing");
    }
    out.flush().context("writing the listing")?;
    if unknown_links > 0 {
        eprintln!(
            "natter-decrypt: {unknown_links} packets of a link type other than Ethernet, Linux cooked (v1, v2) or raw IP were skipped"
        );
    }
    for ((call, direction), tally) in &tallies {
        let mut numbers = tally.frame_numbers.clone();
        numbers.sort_unstable();
        numbers.dedup();
        let span = match (numbers.first(), numbers.last()) {
            (Some(first), Some(last)) => format!(
                ", voice frames {first}..={last}, {} missing",
                usize::from(last - first) + 1 - numbers.len()
            ),
            _ => String::new(),
        };
        let counts: Vec<String> = tally
            .by_function
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        eprintln!(
            "call {call} {}: {}{span}",
            direction.as_str(),
            counts.join(", ")
        );
    }
    Ok(())
}

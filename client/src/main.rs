use clap::Parser;

/// natter (Natter): not built yet, see README.md.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("natter is not implemented yet (protocol version {})", natter_client::protocol_version())
}

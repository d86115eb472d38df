use clap::Parser;

/// natter-supernode (Natter): not built yet, see README.md.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("natter-supernode is not implemented yet (protocol version {})", natter_supernode::protocol_version())
}

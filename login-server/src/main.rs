use clap::Parser;

/// natter-login (Natter): not built yet, see README.md.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("natter-login is not implemented yet (protocol version {})", natter_login::protocol_version())
}

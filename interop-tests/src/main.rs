use clap::Parser;

/// natter-interop-tests (Natter): not built yet, see README.md.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("natter-interop-tests is not implemented yet (protocol version {})", natter_interop_tests::protocol_version())
}

use clap::Parser;

fn main() -> anyhow::Result<()> {
    sdq::cli::run(sdq::cli::Cli::parse())
}

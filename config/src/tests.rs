use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::*;

/// A program shaped like the supernode: a required address, numbers with
/// defaults, a repeatable option, a flag, a secret with an environment
/// variable, and a subcommand with options of its own.
#[derive(Debug, Parser)]
#[command(name = "prog")]
struct Cli {
    #[arg(long, env = "NATTER_CONFIG_TEST_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    print_config: bool,
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    replicas: u16,
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    #[arg(long)]
    verbose_relay: bool,
    #[arg(long, env = "NATTER_CONFIG_TEST_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    Serve {
        #[arg(long, default_value_t = 10)]
        max_sessions: u32,
    },
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn parse(args: &[&str]) -> Result<Parsed<Cli>, ConfigError> {
    parse_from::<Cli, _>(
        std::iter::once("prog").chain(args.iter().copied()),
        &["token"],
    )
}

#[test]
fn the_file_sets_options_the_command_line_leaves_out() {
    let f = file(
        "listen = \"127.0.0.1:4433\"\nreplicas = 5\npeer = [\"10.0.0.1:1\", \"10.0.0.2:2\"]\n\
         verbose_relay = true\nmax-sessions = 7\n",
    );
    let path = f.path().to_str().unwrap();
    let cli = parse(&["--config", path, "serve"]).unwrap().cli;
    assert_eq!(cli.listen, "127.0.0.1:4433".parse().unwrap());
    assert_eq!(cli.replicas, 5);
    assert_eq!(
        cli.peers,
        vec!["10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap()]
    );
    assert!(cli.verbose_relay);
    assert!(matches!(cli.command, Some(Sub::Serve { max_sessions: 7 })));
}

#[test]
fn flags_win_over_the_file_and_defaults_stay_without_it() {
    let f = file("listen = \"127.0.0.1:4433\"\nreplicas = 5\n");
    let path = f.path().to_str().unwrap();
    let cli = parse(&[
        "--config",
        path,
        "--replicas",
        "2",
        "--listen",
        "127.0.0.1:9",
    ])
    .unwrap()
    .cli;
    assert_eq!(cli.replicas, 2);
    assert_eq!(cli.listen, "127.0.0.1:9".parse().unwrap());
    let cli = parse(&["--listen", "127.0.0.1:9"]).unwrap().cli;
    assert_eq!(cli.replicas, 3);
    assert!(parse(&[]).is_err(), "a required option without a file");
}

#[test]
fn the_environment_wins_over_the_file() {
    let f = file("listen = \"127.0.0.1:4433\"\ntoken = \"from-file\"\n");
    let path = f.path().to_str().unwrap();
    let cli = parse(&["--config", path]).unwrap().cli;
    assert_eq!(cli.token.as_deref(), Some("from-file"));
    // Setting a variable would race the other tests (and needs `unsafe`):
    // point the option at one every process has, PATH, instead.
    let mut cmd = Cli::command();
    let mut from_file = BTreeSet::new();
    cmd = apply(cmd, f.path(), &read(f.path()).unwrap(), &mut from_file).unwrap();
    let cmd = cmd.mut_arg("token", |a| a.env("PATH"));
    let matches = cmd
        .try_get_matches_from(["prog", "--config", path])
        .unwrap();
    assert_eq!(
        matches.value_source("token"),
        Some(ValueSource::EnvVariable),
        "an environment variable that is set beats the file"
    );
    assert_ne!(
        matches.get_one::<String>("token").map(String::as_str),
        Some("from-file")
    );
}

#[test]
fn an_unknown_key_names_the_file_and_the_key() {
    let f = file("listen = \"127.0.0.1:4433\"\nreplica = 5\n");
    let path = f.path().to_str().unwrap();
    let e = parse(&["--config", path]).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ConfigError::UnknownKey { .. }), "{text}");
    assert!(text.contains(path) && text.contains("`replica`"), "{text}");
    assert!(text.contains("replicas"), "lists the settings: {text}");
}

#[test]
fn a_bad_value_names_the_file_and_the_key() {
    for (text, key) in [
        ("listen = \"nowhere\"\n", "listen"),
        ("listen = \"127.0.0.1:1\"\nreplicas = 0\n", "replicas"),
        ("listen = \"127.0.0.1:1\"\nreplicas = [1, 2]\n", "replicas"),
        ("listen = \"127.0.0.1:1\"\n[replicas]\nx = 1\n", "replicas"),
    ] {
        let f = file(text);
        let path = f.path().to_str().unwrap();
        let e = parse(&["--config", path]).unwrap_err();
        assert!(matches!(e, ConfigError::Value { .. }), "{text}: {e}");
        assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
    }
    let f = file("listen = \n");
    let e = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
    assert!(matches!(e, ConfigError::Toml { .. }), "{e}");
    let e = parse(&["--config", "/nonexistent/natter.toml"]).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
}

#[test]
fn print_config_shows_sources_redacts_secrets_and_reads_back() {
    let f = file("listen = \"127.0.0.1:4433\"\ntoken = \"hunter2\"\npeer = [\"10.0.0.1:1\"]\n");
    let path = f.path().to_str().unwrap();
    let parsed = parse(&[
        "--config",
        path,
        "--replicas",
        "4",
        "--print-config",
        "serve",
    ])
    .unwrap();
    let text = parsed.print.expect("printed");
    assert!(
        text.contains("listen = \"127.0.0.1:4433\"  # config file"),
        "{text}"
    );
    assert!(text.contains("replicas = 4  # flag"), "{text}");
    assert!(text.contains("max-sessions = 10  # default"), "{text}");
    assert!(
        text.contains("peer = [\"10.0.0.1:1\"]  # config file"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    // What it prints is a config file that gives the same settings (the
    // secret aside).
    let again = file(&text.replace("\"(secret)\"", "\"hunter2\""));
    let cli = parse(&["--config", again.path().to_str().unwrap(), "serve"])
        .unwrap()
        .cli;
    assert_eq!(cli.replicas, 4);
    assert_eq!(cli.listen, "127.0.0.1:4433".parse().unwrap());
    assert_eq!(cli.peers, vec!["10.0.0.1:1".parse().unwrap()]);
    assert_eq!(cli.token.as_deref(), Some("hunter2"));
    assert!(parse(&["--listen", "127.0.0.1:1"]).unwrap().print.is_none());
}

//! # natter-config
//!
//! The one config-file layer of Natter's three programs (`natter`,
//! `natter-supernode`, `natter-login`). A program's settings are its command
//! line options; a TOML file given with `--config FILE` (or the program's
//! `..._CONFIG` environment variable) sets any of them by their long name,
//! and the order of precedence is
//!
//! 1. a flag on the command line,
//! 2. the option's environment variable,
//! 3. the config file,
//! 4. the built-in default.
//!
//! How: the file's values become the options' defaults before clap parses the
//! command line, so clap itself applies the precedence (a default is used
//! only when neither the flag nor its environment variable is there). Every
//! value is checked by the option's own parser first, so a bad value in the
//! file is reported with the file and the key, and a key that names no
//! option is an error, not silently ignored. A key applies to every
//! subcommand that has an option of that name (`data-dir` sets it for
//! `natter-login serve` and for `natter-login users list`); keys may be
//! written with `-` or `_`.
//!
//! `--print-config` prints the settings in effect as a config file, each with
//! where it came from, and exits; values of the options the program calls
//! secret are redacted.
//!
//! ```toml
//! # natter-supernode.toml
//! listen = "0.0.0.0:4433"
//! login = "192.0.2.1:4433"
//! login-key = "/etc/natter/login-key.pub"
//! peer = ["198.51.100.7:4433", "203.0.113.9:4433"]
//! max-relays = 20000
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

/// The option that names the config file (`--config`).
pub const CONFIG_ID: &str = "config";
/// The option that prints the settings and exits (`--print-config`).
pub const PRINT_ID: &str = "print_config";

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML")]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: unknown setting `{key}` (settings: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("{path}: setting `{key}`: {message}")]
    Value {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// The command line itself (including `--help` and `--version`).
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

impl ConfigError {
    /// Prints the error (or the help) and exits as clap does: status 0 for
    /// `--help` and `--version`, 2 for a bad command line or config file.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(e) => e.exit(),
            other => {
                let mut message = format!("error: {other}");
                let mut source = std::error::Error::source(&other);
                while let Some(s) = source {
                    let _ = write!(message, ": {s}");
                    source = s.source();
                }
                eprintln!("{message}");
                std::process::exit(2)
            }
        }
    }
}

/// What [`parse_from`] made of the command line, the environment and the
/// file.
#[derive(Debug)]
pub struct Parsed<C> {
    pub cli: C,
    /// The settings in effect as a config file, when `--print-config` was
    /// given (the caller prints it and exits).
    pub print: Option<String>,
}

/// Parses the process's command line over its config file. Prints the
/// settings and exits on `--print-config`; prints the error and exits on a
/// bad command line or config file. `secret` lists option ids whose values
/// `--print-config` redacts.
pub fn parse<C: CommandFactory + FromArgMatches>(secret: &[&str]) -> C {
    match parse_from::<C, _>(std::env::args_os(), secret) {
        Ok(Parsed {
            print: Some(text), ..
        }) => {
            print!("{text}");
            std::process::exit(0)
        }
        Ok(parsed) => parsed.cli,
        Err(e) => e.exit(),
    }
}

/// [`parse`] without exiting: for tests and for callers that print
/// themselves.
pub fn parse_from<C, I>(argv: I, secret: &[&str]) -> Result<Parsed<C>, ConfigError>
where
    C: CommandFactory + FromArgMatches,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = C::command();
    // Which file: a lenient first pass (missing options are not an error
    // yet: the file may supply them).
    let first = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv.clone())
        .ok();
    let path = first
        .as_ref()
        .and_then(|m| m.try_get_one::<PathBuf>(CONFIG_ID).ok().flatten().cloned());
    let mut from_file = BTreeSet::new();
    if let Some(path) = &path {
        let settings = read(path)?;
        command = apply(command, path, &settings, &mut from_file)?;
    }
    let matches = command.clone().try_get_matches_from(argv)?;
    let cli = C::from_arg_matches(&matches)?;
    let print = matches
        .try_get_one::<bool>(PRINT_ID)
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false)
        // Listed in the program's own order (setting defaults reorders them).
        .then(|| render(&C::command(), &matches, path.as_deref(), &from_file, secret));
    Ok(Parsed { cli, print })
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Toml {
            path: path.to_owned(),
            source: Box::new(source),
        })
}

/// An option the file may set: one with a long name, not the file's own
/// options, not help or version.
fn settable(arg: &Arg) -> Option<&str> {
    let long = arg.get_long()?;
    let id = arg.get_id().as_str();
    let builtin = matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    );
    (!builtin && id != CONFIG_ID && id != PRINT_ID).then_some(long)
}

/// Every settable long name in the command tree.
fn known(command: &Command, into: &mut BTreeSet<String>) {
    into.extend(
        command
            .get_arguments()
            .filter_map(settable)
            .map(str::to_owned),
    );
    for sub in command.get_subcommands() {
        known(sub, into);
    }
}

/// The file's value as the option's default value(s), in clap's string form.
fn values(path: &Path, key: &str, value: &toml::Value) -> Result<Vec<String>, ConfigError> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(ConfigError::Value {
            path: path.to_owned(),
            key: key.to_owned(),
            message: format!("a {} is not a value of an option", other.type_str()),
        }),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

/// Makes the file's settings the defaults of the options they name,
/// anywhere in the command tree, after checking each with the option's
/// parser.
fn apply(
    mut command: Command,
    path: &Path,
    settings: &toml::Table,
    from_file: &mut BTreeSet<String>,
) -> Result<Command, ConfigError> {
    let mut names = BTreeSet::new();
    known(&command, &mut names);
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in settings {
        let long = key.replace('_', "-");
        if !names.contains(&long) {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                known: names.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        wanted.insert(long, values(path, key, value)?);
    }
    command = set_defaults(command, path, &wanted, from_file)?;
    Ok(command)
}

fn set_defaults(
    mut command: Command,
    path: &Path,
    wanted: &BTreeMap<String, Vec<String>>,
    from_file: &mut BTreeSet<String>,
) -> Result<Command, ConfigError> {
    let targets: Vec<(String, String, bool)> = command
        .get_arguments()
        .filter_map(|arg| {
            let long = settable(arg)?;
            wanted.get(long)?;
            let multiple = matches!(arg.get_action(), ArgAction::Append | ArgAction::Count)
                || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
            Some((arg.get_id().to_string(), long.to_owned(), multiple))
        })
        .collect();
    for (id, long, multiple) in targets {
        let given = &wanted[&long];
        if given.len() > 1 && !multiple {
            return Err(ConfigError::Value {
                path: path.to_owned(),
                key: long,
                message: "takes one value, not a list".into(),
            });
        }
        if let Some(arg) = command.get_arguments().find(|a| a.get_id() == id.as_str()) {
            for v in given {
                check(arg, &long, v).map_err(|message| ConfigError::Value {
                    path: path.to_owned(),
                    key: long.clone(),
                    message,
                })?;
            }
        }
        let given = given.clone();
        command = command.mut_arg(id.as_str(), move |arg| {
            arg.required(false).default_values(given)
        });
        from_file.insert(id);
    }
    let subs: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        let mut failed = None;
        command = command.mut_subcommand(&name, |sub| {
            match set_defaults(sub.clone(), path, wanted, from_file) {
                Ok(sub) => sub,
                Err(e) => {
                    failed = Some(e);
                    sub
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(command)
}

/// Checks one value with the option's own parser, on a command of that one
/// option (its conflicts and requirements are the real parse's business).
fn check(arg: &Arg, long: &str, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("`{value}` is not true or false")),
        };
    }
    let one = Arg::new("value")
        .long(long.to_owned())
        .value_parser(arg.get_value_parser().clone())
        .num_args(1);
    Command::new("check")
        .no_binary_name(true)
        .arg(one)
        .try_get_matches_from([format!("--{long}={value}")])
        .map(|_| ())
        .map_err(|e| first_line(&e.to_string()))
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

/// The settings in effect for the command path that was parsed, as a config
/// file: one line per option, with where its value came from.
fn render(
    command: &Command,
    matches: &ArgMatches,
    path: Option<&Path>,
    from_file: &BTreeSet<String>,
    secret: &[&str],
) -> String {
    let mut out = format!(
        "# {} settings in effect (flag > environment > {} > built-in default)\n",
        command.get_name(),
        path.map_or("config file".to_owned(), |p| p.display().to_string())
    );
    let mut command = command;
    let mut matches = matches;
    loop {
        for arg in command.get_arguments() {
            let Some(long) = settable(arg) else { continue };
            let id = arg.get_id().as_str();
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::DefaultValue) if from_file.contains(id) => "config file",
                Some(ValueSource::DefaultValue) => "default",
                _ => {
                    let _ = writeln!(out, "# {long} = (not set)");
                    continue;
                }
            };
            let raw: Vec<String> = matches
                .try_get_raw(id)
                .ok()
                .flatten()
                .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let shown: Vec<String> = if secret.contains(&id) {
                raw.iter().map(|_| "\"(secret)\"".to_owned()).collect()
            } else {
                raw.iter().map(|v| toml_value(v)).collect()
            };
            let multiple = matches!(arg.get_action(), ArgAction::Append);
            let value = if multiple {
                format!("[{}]", shown.join(", "))
            } else {
                shown.join(", ")
            };
            let _ = writeln!(out, "{long} = {value}  # {source}");
        }
        match matches.subcommand() {
            Some((name, sub_matches)) => {
                let Some(sub) = command.find_subcommand(name) else {
                    break;
                };
                let _ = writeln!(out, "# ({name})");
                command = sub;
                matches = sub_matches;
            }
            None => break,
        }
    }
    out
}

/// A value as TOML: integers and booleans bare, everything else a string.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests;

//! Layered configuration: built-in defaults, then the program's section of the TOML file given
//! with `--config`, then `WSMQ_<KEY>` environment variables, then command-line flags.
//!
//! One file serves all the programs (`[gateway]`, `[bridge]`, `[worker]`), so it can live in
//! `/etc/wsmq/wsmq.toml` beside one `EnvironmentFile`. Unknown sections and unknown keys in the
//! file are errors that name the key: a typo must not silently fall back to a default. The
//! environment is read only for keys the program knows, since one environment file feeds all
//! of them.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The sections a config file may have.
pub const SECTIONS: [&str; 3] = ["gateway", "bridge", "worker"];

/// Prefix of the environment variables: `WSMQ_LISTEN` sets `listen`.
pub const ENV_PREFIX: &str = "WSMQ_";

/// Why the configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(Box<figment::Error>),
    #[error("{path}: unknown section [{section}] (expected one of: gateway, bridge, worker)")]
    UnknownSection { path: String, section: String },
    #[error("cannot show the configuration as TOML")]
    Render(#[source] toml::ser::Error),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Invalid(Box::new(e))
    }
}

/// Assembles the configuration of `section`.
///
/// `T`'s `Default` gives the defaults and the set of keys; `T` should be
/// `#[serde(deny_unknown_fields)]`. `overrides` holds the flags given on the command line:
/// serialise it with `None` fields skipped so that only given flags override.
pub fn load<T, O>(section: &str, file: Option<&Path>, overrides: &O) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
    O: Serialize,
{
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let keys: Vec<String> = defaults
        .data()?
        .into_values()
        .flat_map(|dict| dict.into_keys())
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let mut figment = defaults;
    if let Some(path) = file {
        let whole = Figment::from(Toml::file_exact(path));
        for dict in whole.data()?.into_values() {
            if let Some(unknown) = dict.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
                return Err(ConfigError::UnknownSection {
                    path: path.display().to_string(),
                    section: unknown.clone(),
                });
            }
        }
        figment = figment.merge(whole.focus(section));
    }
    figment = figment
        .merge(Env::prefixed(ENV_PREFIX).only(&key_refs))
        .merge(Serialized::defaults(overrides));
    Ok(figment.extract()?)
}

/// The effective configuration as the TOML section an operator could paste into the file.
pub fn render<T: Serialize>(section: &str, config: &T) -> Result<String, ConfigError> {
    let mut table = toml::Table::new();
    table.insert(
        section.to_owned(),
        toml::Value::try_from(config).map_err(ConfigError::Render)?,
    );
    toml::to_string(&table).map_err(ConfigError::Render)
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`, for logs and `--print-config`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

/// Each URL of a list masked as by [`mask_url_password`].
pub fn mask_url_passwords(urls: &[String]) -> Vec<String> {
    urls.iter().map(|url| mask_url_password(url)).collect()
}

/// A list of broker URLs in the configuration (`amqp`): the file may give one string or an
/// array of strings, `WSMQ_AMQP` a comma-separated string, the flag may be repeated; every
/// piece is split on commas ([`split_urls`](crate::split_urls)). Use it as
/// `#[serde(deserialize_with = "wsmq_service::url_list::deserialize")]`.
pub mod url_list {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    /// Reads a string or an array of strings into the URLs they list.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(text) => crate::split_urls([text.as_str()]),
            OneOrMany::Many(list) => crate::split_urls(list.iter().map(String::as_str)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::io::Write;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        listen: String,
        workers: u32,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".into(),
                workers: 4,
            }
        }
    }

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        workers: Option<u32>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn defaults_apply_without_file_or_flags() {
        let got: Sample = load("gateway", None, &Flags::default()).expect("loads");
        assert_eq!(got, Sample::default());
    }

    #[test]
    fn file_section_then_flags_override_in_that_order() {
        let f = file("[gateway]\nlisten = \"0.0.0.0:9\"\nworkers = 7\n[bridge]\nother = 1\n");
        let got: Sample =
            load("gateway", Some(f.path()), &Flags { workers: Some(9) }).expect("loads");
        assert_eq!(
            got,
            Sample {
                listen: "0.0.0.0:9".into(),
                workers: 9
            }
        );
    }

    #[test]
    fn unknown_key_in_the_section_is_an_error_naming_it() {
        let f = file("[gateway]\nlistne = \"x\"\n");
        let err =
            load::<Sample, _>("gateway", Some(f.path()), &Flags::default()).expect_err("refused");
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn unknown_section_is_an_error_naming_it() {
        let f = file("[gatway]\nlisten = \"x\"\n");
        let err =
            load::<Sample, _>("gateway", Some(f.path()), &Flags::default()).expect_err("refused");
        assert!(err.to_string().contains("gatway"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Sample, _>(
            "gateway",
            Some(Path::new("/nonexistent/wsmq.toml")),
            &Flags::default(),
        );
        assert!(err.is_err());
    }

    #[test]
    fn rendered_config_loads_back_to_the_same_values() {
        let config = Sample {
            listen: "[::1]:80".into(),
            workers: 2,
        };
        let f = file(&render("gateway", &config).expect("renders"));
        let got: Sample = load("gateway", Some(f.path()), &Flags::default()).expect("loads");
        assert_eq!(got, config);
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Brokers {
        #[serde(deserialize_with = "url_list::deserialize")]
        amqp: Vec<String>,
    }

    impl Default for Brokers {
        fn default() -> Self {
            Self {
                amqp: vec!["amqp://default/".into()],
            }
        }
    }

    #[derive(Serialize, Default)]
    struct BrokerFlags {
        #[serde(skip_serializing_if = "Vec::is_empty")]
        amqp: Vec<String>,
    }

    #[test]
    fn broker_list_is_a_string_or_an_array_and_commas_split_it() {
        let f = file("[bridge]\namqp = \"amqp://a/, amqp://b/\"\n");
        let got: Brokers = load("bridge", Some(f.path()), &BrokerFlags::default()).expect("loads");
        assert_eq!(got.amqp, ["amqp://a/", "amqp://b/"]);
        let f = file("[bridge]\namqp = [\"amqp://a/\", \"amqp://b/,amqp://c/\"]\n");
        let got: Brokers = load("bridge", Some(f.path()), &BrokerFlags::default()).expect("loads");
        assert_eq!(got.amqp, ["amqp://a/", "amqp://b/", "amqp://c/"]);
        let got: Brokers = load("bridge", None, &BrokerFlags::default()).expect("loads");
        assert_eq!(got.amqp, ["amqp://default/"]);
    }

    #[test]
    fn repeated_broker_flags_replace_the_file_list_whole() {
        let f = file("[bridge]\namqp = [\"amqp://a/\", \"amqp://b/\"]\n");
        let flags = BrokerFlags {
            amqp: vec!["amqp://x/".into(), "amqp://y/,amqp://z/".into()],
        };
        let got: Brokers = load("bridge", Some(f.path()), &flags).expect("loads");
        assert_eq!(got.amqp, ["amqp://x/", "amqp://y/", "amqp://z/"]);
    }

    #[test]
    fn broker_list_renders_and_loads_back() {
        let config = Brokers {
            amqp: vec!["amqp://a/".into(), "amqp://b/".into()],
        };
        let f = file(&render("bridge", &config).expect("renders"));
        let got: Brokers = load("bridge", Some(f.path()), &BrokerFlags::default()).expect("loads");
        assert_eq!(got, config);
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
            "amqp://guest:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(mask_url_password("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(mask_url_password("amqps://u:p:q@h"), "amqps://u:***@h");
    }
}

/// The flags every program has for its configuration file; `#[command(flatten)]` it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (the program's own section of it).
    #[arg(long, env = "WSMQ_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration as TOML (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// What `main` does with an assembled configuration before running: on error, explain and exit
/// 64 (EX_USAGE, so systemd does not restart-loop on a bad setting); with `--print-config`,
/// print it and exit; otherwise go on with it.
pub fn startup<C, E, R>(
    program: &str,
    args: &ConfigArgs,
    config: Result<C, E>,
    render: R,
) -> std::ops::ControlFlow<std::process::ExitCode, C>
where
    E: std::fmt::Display,
    R: FnOnce(&C) -> Result<String, ConfigError>,
{
    use std::ops::ControlFlow;
    use std::process::ExitCode;
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{program}: invalid configuration: {e}");
            return ControlFlow::Break(ExitCode::from(crate::cli::EXIT_USAGE));
        }
    };
    if !args.print_config {
        return ControlFlow::Continue(config);
    }
    ControlFlow::Break(match render(&config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    })
}

//! Where Consul is and how to reach it: [`ConsulConfig`], read from Consul's standard
//! `CONSUL_*` environment variables exactly as Consul's own tools read them (the Go `api`
//! package's `DefaultConfig`), or from the equivalent flags ([`ConsulArgs`]).
//!
//! | variable | flag | meaning |
//! |---|---|---|
//! | `CONSUL_HTTP_ADDR` | `--consul-address` | `host:port`, `http://…`, `https://…` (optionally with a path prefix) or `unix:///path/to/socket` |
//! | `CONSUL_HTTP_TOKEN` | `--consul-token` | ACL token, sent as `X-Consul-Token` |
//! | `CONSUL_HTTP_TOKEN_FILE` | `--consul-token-file` | file holding the token; wins over `CONSUL_HTTP_TOKEN` |
//! | `CONSUL_HTTP_AUTH` | `--consul-http-auth` | `user[:password]` for HTTP basic auth |
//! | `CONSUL_HTTP_SSL` | `--consul-ssl` | `true`: HTTPS even when the address has no (or an `http://`) scheme |
//! | `CONSUL_HTTP_SSL_VERIFY` | `--consul-ssl-verify` | `false`: do not verify the agent's certificate |
//! | `CONSUL_CACERT` | `--consul-ca-file` | PEM file of the CA(s) to trust instead of the system's |
//! | `CONSUL_CAPATH` | `--consul-ca-path` | folder of PEM CA files (used when `CONSUL_CACERT` is unset) |
//! | `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY` | `--consul-client-cert`, `--consul-client-key` | PEM client certificate and key (agents with `verify_incoming`) |
//! | `CONSUL_TLS_SERVER_NAME` | `--consul-tls-server-name` | name the agent's certificate must carry, when it is not the address's host |
//! | `CONSUL_NAMESPACE` | `--consul-namespace` | sent as `?ns=` on every request (Consul Enterprise) |
//! | `CONSUL_PARTITION` | `--consul-partition` | sent as `?partition=` on every request (Consul Enterprise) |
//!
//! As in Go, an empty variable counts as unset, and booleans use Go's syntax (`1`, `t`,
//! `true`, `TRUE`, `0`, `f`, `false`...). Unlike Go, a value that does not parse is an
//! error naming the variable rather than a logged warning, because a client that silently
//! talks plain HTTP or skips verification is worse than one that refuses to start.
//! Files (token, CA, client certificate) are read when the client is built
//! ([`ConsulClient::new`](crate::ConsulClient::new)), and their errors name the variable too.

use crate::client::Error;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// One client setting: the environment variable and the flag that set it, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub env: &'static str,
    /// Long flag name, without the leading `--`.
    pub flag: &'static str,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (--{})", self.env, self.flag)
    }
}

/// The settings, with Consul's variable names (`api/api.go`).
pub mod settings {
    use super::Setting;

    pub const HTTP_ADDR: Setting = Setting {
        env: "CONSUL_HTTP_ADDR",
        flag: "consul-address",
    };
    pub const HTTP_TOKEN: Setting = Setting {
        env: "CONSUL_HTTP_TOKEN",
        flag: "consul-token",
    };
    pub const HTTP_TOKEN_FILE: Setting = Setting {
        env: "CONSUL_HTTP_TOKEN_FILE",
        flag: "consul-token-file",
    };
    pub const HTTP_AUTH: Setting = Setting {
        env: "CONSUL_HTTP_AUTH",
        flag: "consul-http-auth",
    };
    pub const HTTP_SSL: Setting = Setting {
        env: "CONSUL_HTTP_SSL",
        flag: "consul-ssl",
    };
    pub const HTTP_SSL_VERIFY: Setting = Setting {
        env: "CONSUL_HTTP_SSL_VERIFY",
        flag: "consul-ssl-verify",
    };
    pub const CA_FILE: Setting = Setting {
        env: "CONSUL_CACERT",
        flag: "consul-ca-file",
    };
    pub const CA_PATH: Setting = Setting {
        env: "CONSUL_CAPATH",
        flag: "consul-ca-path",
    };
    pub const CLIENT_CERT: Setting = Setting {
        env: "CONSUL_CLIENT_CERT",
        flag: "consul-client-cert",
    };
    pub const CLIENT_KEY: Setting = Setting {
        env: "CONSUL_CLIENT_KEY",
        flag: "consul-client-key",
    };
    pub const TLS_SERVER_NAME: Setting = Setting {
        env: "CONSUL_TLS_SERVER_NAME",
        flag: "consul-tls-server-name",
    };
    pub const NAMESPACE: Setting = Setting {
        env: "CONSUL_NAMESPACE",
        flag: "consul-namespace",
    };
    pub const PARTITION: Setting = Setting {
        env: "CONSUL_PARTITION",
        flag: "consul-partition",
    };

    /// Every setting, for checks and documentation.
    pub const ALL: [Setting; 13] = [
        HTTP_ADDR,
        HTTP_TOKEN,
        HTTP_TOKEN_FILE,
        HTTP_AUTH,
        HTTP_SSL,
        HTTP_SSL_VERIFY,
        CA_FILE,
        CA_PATH,
        CLIENT_CERT,
        CLIENT_KEY,
        TLS_SERVER_NAME,
        NAMESPACE,
        PARTITION,
    ];
}

/// Where Consul is and how to authenticate. Build it with [`ConsulConfig::try_from_env`],
/// [`ConsulArgs::config`], or a struct literal ending in `..ConsulConfig::default()`.
#[derive(Clone)]
pub struct ConsulConfig {
    /// `host:port`, a full `http(s)://host:port[/prefix]` URL, or `unix:///path`.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// Timeout of non-blocking requests.
    pub request_timeout: Duration,
    /// File holding the ACL token (read once, when the client is built); when it holds a
    /// token, that token wins over [`token`](Self::token), as in Consul's Go client.
    pub token_file: Option<PathBuf>,
    /// HTTPS even when [`address`](Self::address) has no scheme or says `http://`.
    pub ssl: bool,
    /// How HTTPS connections are verified and authenticated.
    pub tls: TlsConfig,
    /// HTTP basic auth (`CONSUL_HTTP_AUTH`), for agents behind an authenticating proxy.
    pub http_auth: Option<HttpAuth>,
    /// Consul Enterprise namespace, sent as `?ns=` on every request.
    pub namespace: Option<String>,
    /// Consul Enterprise admin partition, sent as `?partition=` on every request.
    pub partition: Option<String>,
}

/// TLS settings used when the address is `https` (or [`ConsulConfig::ssl`] is set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Folder of PEM CA files to trust; used when `ca_file` is unset.
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate (chain), presented to agents that verify clients.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Name the agent's certificate is verified against instead of the address's host
    /// (a port, if given, is ignored, as in Consul).
    pub server_name: Option<String>,
    /// Verify the agent's certificate (`CONSUL_HTTP_SSL_VERIFY=false` turns it off).
    pub verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            ca_path: None,
            client_cert: None,
            client_key: None,
            server_name: None,
            verify: true,
        }
    }
}

/// HTTP basic auth credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpAuth {
    pub username: String,
    pub password: Option<String>,
}

impl HttpAuth {
    /// Parses `user[:password]`, as Consul does.
    pub fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some((username, password)) => Self {
                username: username.to_string(),
                password: Some(password.to_string()),
            },
            None => Self {
                username: text.to_string(),
                password: None,
            },
        }
    }
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8500".into(),
            token: None,
            request_timeout: Duration::from_secs(10),
            token_file: None,
            ssl: false,
            tls: TlsConfig::default(),
            http_auth: None,
            namespace: None,
            partition: None,
        }
    }
}

// Secrets stay out of logs and panic messages.
impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("token_file", &self.token_file)
            .field("ssl", &self.ssl)
            .field("tls", &self.tls)
            .field("http_auth", &self.http_auth)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .finish()
    }
}

impl ConsulConfig {
    /// Reads Consul's standard variables (see the [module](self) table), with Consul's
    /// defaults for the unset ones.
    pub fn try_from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, Error> {
        ConsulArgs::from_lookup(lookup).config()
    }
}

/// Help heading of the Consul client flags.
const HEADING: &str = "Consul client (Consul's standard CONSUL_* variables)";

/// The Consul client flags, each also read from its standard `CONSUL_*` variable. Flatten
/// it into a command's arguments (`#[command(flatten)]`); every plugworker command that
/// talks to Consul uses this one definition.
// Each flag names its help heading (rather than the struct, with `next_help_heading`),
// because a struct-level heading also captures the flags flattened after it.
#[derive(clap::Args, Clone, Default, PartialEq, Eq)]
pub struct ConsulArgs {
    /// Consul agent HTTP address: host:port, http(s)://host:port[/prefix] or unix:///path.
    #[arg(help_heading = HEADING, long = settings::HTTP_ADDR.flag, env = settings::HTTP_ADDR.env, default_value = "127.0.0.1:8500")]
    pub consul_address: String,
    /// Consul ACL token (sent as X-Consul-Token).
    #[arg(help_heading = HEADING, long = settings::HTTP_TOKEN.flag, env = settings::HTTP_TOKEN.env, hide_env_values = true)]
    pub consul_token: Option<String>,
    /// File holding the Consul ACL token; wins over --consul-token.
    #[arg(help_heading = HEADING, long = settings::HTTP_TOKEN_FILE.flag, env = settings::HTTP_TOKEN_FILE.env, value_name = "FILE")]
    pub consul_token_file: Option<String>,
    /// HTTP basic auth for Consul, as user[:password].
    #[arg(help_heading = HEADING, long = settings::HTTP_AUTH.flag, env = settings::HTTP_AUTH.env, hide_env_values = true, value_name = "USER[:PASSWORD]")]
    pub consul_http_auth: Option<String>,
    /// Use HTTPS even when the address has no scheme (true/false).
    #[arg(help_heading = HEADING, long = settings::HTTP_SSL.flag, env = settings::HTTP_SSL.env, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub consul_ssl: Option<String>,
    /// Verify Consul's TLS certificate (true/false; false is for tests only).
    #[arg(help_heading = HEADING, long = settings::HTTP_SSL_VERIFY.flag, env = settings::HTTP_SSL_VERIFY.env, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub consul_ssl_verify: Option<String>,
    /// PEM file of the CA certificates that sign Consul's certificate.
    #[arg(help_heading = HEADING, long = settings::CA_FILE.flag, env = settings::CA_FILE.env, value_name = "FILE")]
    pub consul_ca_file: Option<String>,
    /// Folder of PEM CA certificates (used when no CA file is given).
    #[arg(help_heading = HEADING, long = settings::CA_PATH.flag, env = settings::CA_PATH.env, value_name = "DIR")]
    pub consul_ca_path: Option<String>,
    /// PEM client certificate for agents that verify clients (verify_incoming).
    #[arg(help_heading = HEADING, long = settings::CLIENT_CERT.flag, env = settings::CLIENT_CERT.env, value_name = "FILE")]
    pub consul_client_cert: Option<String>,
    /// PEM private key of the client certificate.
    #[arg(help_heading = HEADING, long = settings::CLIENT_KEY.flag, env = settings::CLIENT_KEY.env, value_name = "FILE")]
    pub consul_client_key: Option<String>,
    /// Name Consul's certificate must carry, when it is not the address's host.
    #[arg(help_heading = HEADING, long = settings::TLS_SERVER_NAME.flag, env = settings::TLS_SERVER_NAME.env, value_name = "NAME")]
    pub consul_tls_server_name: Option<String>,
    /// Consul Enterprise namespace (sent as ?ns=).
    #[arg(help_heading = HEADING, long = settings::NAMESPACE.flag, env = settings::NAMESPACE.env)]
    pub consul_namespace: Option<String>,
    /// Consul Enterprise admin partition (sent as ?partition=).
    #[arg(help_heading = HEADING, long = settings::PARTITION.flag, env = settings::PARTITION.env)]
    pub consul_partition: Option<String>,
}

impl fmt::Debug for ConsulArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConsulArgs")
            .field("consul_address", &self.consul_address)
            .field("consul_token", &redacted(&self.consul_token))
            .field("consul_token_file", &self.consul_token_file)
            .field("consul_http_auth", &redacted(&self.consul_http_auth))
            .field("consul_ssl", &self.consul_ssl)
            .field("consul_ssl_verify", &self.consul_ssl_verify)
            .field("consul_ca_file", &self.consul_ca_file)
            .field("consul_ca_path", &self.consul_ca_path)
            .field("consul_client_cert", &self.consul_client_cert)
            .field("consul_client_key", &self.consul_client_key)
            .field("consul_tls_server_name", &self.consul_tls_server_name)
            .field("consul_namespace", &self.consul_namespace)
            .field("consul_partition", &self.consul_partition)
            .finish()
    }
}

impl ConsulArgs {
    /// The client configuration these flags and variables describe.
    pub fn config(&self) -> Result<ConsulConfig, Error> {
        let defaults = ConsulConfig::default();
        let boolean = |setting: Setting, value: &Option<String>| -> Result<Option<bool>, Error> {
            let Some(text) = non_empty(value) else {
                return Ok(None);
            };
            match parse_go_bool(text) {
                Some(value) => Ok(Some(value)),
                None => Err(Error::Config {
                    setting,
                    value: text.to_string(),
                    reason: "not a boolean (expected true or false, as in Go: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)".into(),
                }),
            }
        };
        let path = |value: &Option<String>| non_empty(value).map(PathBuf::from);
        let text = |value: &Option<String>| non_empty(value).map(str::to_string);
        Ok(ConsulConfig {
            address: if self.consul_address.trim().is_empty() {
                defaults.address
            } else {
                self.consul_address.trim().to_string()
            },
            token: text(&self.consul_token),
            request_timeout: defaults.request_timeout,
            token_file: path(&self.consul_token_file),
            ssl: boolean(settings::HTTP_SSL, &self.consul_ssl)?.unwrap_or(false),
            tls: TlsConfig {
                ca_file: path(&self.consul_ca_file),
                ca_path: path(&self.consul_ca_path),
                client_cert: path(&self.consul_client_cert),
                client_key: path(&self.consul_client_key),
                server_name: text(&self.consul_tls_server_name),
                verify: boolean(settings::HTTP_SSL_VERIFY, &self.consul_ssl_verify)?
                    .unwrap_or(true),
            },
            http_auth: non_empty(&self.consul_http_auth).map(HttpAuth::parse),
            namespace: text(&self.consul_namespace),
            partition: text(&self.consul_partition),
        })
    }

    /// A client for these settings.
    pub fn client(&self) -> Result<crate::ConsulClient, Error> {
        crate::ConsulClient::new(self.config()?)
    }

    /// The settings as only the environment gives them (no command line).
    fn from_lookup(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> Self {
        // Not clap: a variable that is not UTF-8 must not panic in `try_from_env`; it is
        // read lossily instead, and then fails to parse or to open with a clear error.
        let get = |setting: Setting| lookup(setting.env).map(|v| v.to_string_lossy().into_owned());
        Self {
            consul_address: get(settings::HTTP_ADDR).unwrap_or_default(),
            consul_token: get(settings::HTTP_TOKEN),
            consul_token_file: get(settings::HTTP_TOKEN_FILE),
            consul_http_auth: get(settings::HTTP_AUTH),
            consul_ssl: get(settings::HTTP_SSL),
            consul_ssl_verify: get(settings::HTTP_SSL_VERIFY),
            consul_ca_file: get(settings::CA_FILE),
            consul_ca_path: get(settings::CA_PATH),
            consul_client_cert: get(settings::CLIENT_CERT),
            consul_client_key: get(settings::CLIENT_KEY),
            consul_tls_server_name: get(settings::TLS_SERVER_NAME),
            consul_namespace: get(settings::NAMESPACE),
            consul_partition: get(settings::PARTITION),
        }
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// Go's `strconv.ParseBool`, which Consul uses for its boolean variables.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use std::collections::HashMap;
    use std::ffi::OsString;

    #[derive(Parser, Debug)]
    struct Command {
        #[command(flatten)]
        consul: ConsulArgs,
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn every_setting_is_a_flag_with_its_consul_variable() {
        let command = Command::command();
        for setting in settings::ALL {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(setting.flag))
                .unwrap_or_else(|| panic!("no --{} flag", setting.flag));
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(setting.env)));
        }
        assert_eq!(
            command.get_arguments().count(),
            settings::ALL.len(),
            "a flag without a setting constant"
        );
    }

    #[test]
    fn reads_every_variable_like_consuls_go_client() {
        let config = ConsulConfig::from_lookup(env(&[
            ("CONSUL_HTTP_ADDR", "https://consul.internal:8501"),
            ("CONSUL_HTTP_TOKEN", "secret-token"),
            ("CONSUL_HTTP_TOKEN_FILE", "/run/token"),
            ("CONSUL_HTTP_AUTH", "admin:pa:ss"),
            ("CONSUL_HTTP_SSL", "T"),
            ("CONSUL_HTTP_SSL_VERIFY", "0"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
            ("CONSUL_CAPATH", "/etc/consul/cas"),
            ("CONSUL_CLIENT_CERT", "/etc/consul/client.pem"),
            ("CONSUL_CLIENT_KEY", "/etc/consul/client-key.pem"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
            ("CONSUL_NAMESPACE", "team-a"),
            ("CONSUL_PARTITION", "part-1"),
        ]))
        .unwrap();
        assert_eq!(config.address, "https://consul.internal:8501");
        assert_eq!(config.token.as_deref(), Some("secret-token"));
        assert_eq!(config.token_file, Some(PathBuf::from("/run/token")));
        assert_eq!(
            config.http_auth,
            Some(HttpAuth {
                username: "admin".into(),
                password: Some("pa:ss".into())
            })
        );
        assert!(config.ssl);
        assert!(!config.tls.verify);
        assert_eq!(
            config.tls.ca_file,
            Some(PathBuf::from("/etc/consul/ca.pem"))
        );
        assert_eq!(config.tls.ca_path, Some(PathBuf::from("/etc/consul/cas")));
        assert_eq!(
            config.tls.client_cert,
            Some(PathBuf::from("/etc/consul/client.pem"))
        );
        assert_eq!(
            config.tls.client_key,
            Some(PathBuf::from("/etc/consul/client-key.pem"))
        );
        assert_eq!(config.tls.server_name.as_deref(), Some("server.dc1.consul"));
        assert_eq!(config.namespace.as_deref(), Some("team-a"));
        assert_eq!(config.partition.as_deref(), Some("part-1"));
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret-token") && !debug.contains("pa:ss"),
            "{debug}"
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let config = ConsulConfig::from_lookup(env(&[
            ("CONSUL_HTTP_ADDR", ""),
            ("CONSUL_HTTP_TOKEN", ""),
            ("CONSUL_HTTP_SSL", ""),
            ("CONSUL_HTTP_SSL_VERIFY", ""),
            ("CONSUL_CACERT", ""),
        ]))
        .unwrap();
        assert_eq!(config.address, "127.0.0.1:8500");
        assert_eq!(config.token, None);
        assert!(!config.ssl);
        assert!(config.tls.verify);
        assert_eq!(config.tls, TlsConfig::default());
    }

    #[test]
    fn a_bad_boolean_names_its_variable() {
        let error = ConsulConfig::from_lookup(env(&[("CONSUL_HTTP_SSL", "yes please")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("CONSUL_HTTP_SSL (--consul-ssl)"), "{error}");
        assert!(error.contains("yes please"), "{error}");
    }

    #[test]
    fn flags_set_the_same_settings_and_a_bare_ssl_flag_means_true() {
        // Flags only: the test must not depend on (or change) the process environment.
        let command = Command::try_parse_from([
            "test",
            "--consul-address",
            "consul.internal:8501",
            "--consul-ssl",
            "--consul-ca-file",
            "/tmp/ca.pem",
        ])
        .unwrap();
        let config = command.consul.config().unwrap();
        assert_eq!(config.address, "consul.internal:8501");
        assert!(config.ssl);
        assert_eq!(config.tls.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
    }
}

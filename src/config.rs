//! Command-line flags, Go-style as the seed writes them, with `BROKER_<NAME>`
//! environment fallbacks so secrets need not show in `ps`.

use std::collections::HashMap;
use std::path::PathBuf;

/// Every flag: name, default, help. The order is the order of `--help`.
const FLAGS: &[(&str, &str, &str)] = &[
    ("origin", "*", "value of Access-Control-Allow-Origin"),
    ("port", "8080", "listening port (default 443 when --secure)"),
    ("jwt_expiry", "86400", "lifetime of a JWT in seconds"),
    ("jwt_secret", "secret", "HS256 signing secret for JWTs"),
    ("secure", "false", "serve HTTPS"),
    ("auto_cert", "true", "obtain and renew a Let's Encrypt certificate for --domain"),
    ("key_path", "certs/private_key.pem", "PEM private key when --auto_cert=false"),
    ("cert_path", "certs/chain.pem", "PEM certificate chain when --auto_cert=false"),
    ("certs", "certs", "where ACME account keys and certificates are kept"),
    ("db", "db", "directory of the embedded database"),
    ("domain", "", "domain name to request a certificate for"),
    ("admin_token", "letmein", "token that authorizes user management"),
    ("keep_alive", "30", "seconds between SSE keep-alive comments (0 = off)"),
    ("max_body", "1048576", "largest accepted request body in bytes"),
    ("ntp_servers", DEFAULT_NTP, "comma-separated NTP servers, host[:port]"),
    ("ntp_interval", "3600", "seconds between NTP clock corrections"),
    ("acme_directory", LETS_ENCRYPT, "ACME directory URL"),
    ("acme_ca", "", "PEM file of extra roots trusted for the ACME server"),
];

const BOOLEANS: &[&str] = &["secure", "auto_cert"];
const DEFAULT_NTP: &str = "pool.ntp.org,time.google.com,time.cloudflare.com,time.apple.com";
const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The broker's settings, parsed and checked once at start-up.
pub struct Config {
    pub origin: String,
    pub port: u16,
    pub jwt_expiry: u64,
    pub jwt_secret: String,
    pub secure: bool,
    pub auto_cert: bool,
    pub key_path: PathBuf,
    pub cert_path: PathBuf,
    pub certs: PathBuf,
    pub db: PathBuf,
    pub domain: String,
    pub admin_token: String,
    pub keep_alive: u64,
    pub max_body: usize,
    pub ntp_servers: Vec<String>,
    pub ntp_interval: u64,
    pub acme_directory: String,
    pub acme_ca: Option<PathBuf>,
}

impl Config {
    /// Parses flags over environment over defaults. `Err` is the one-line
    /// reason to print before exiting with status 2.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut values: HashMap<&str, String> = HashMap::new();
        for (name, _, _) in FLAGS {
            if let Ok(value) = std::env::var(format!("BROKER_{}", name.to_uppercase())) {
                values.insert(name, value);
            }
        }
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                print_help();
                std::process::exit(0);
            }
            let flag = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
            let flag = flag.ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag, None),
            };
            let (name, _, _) = FLAGS
                .iter()
                .find(|(known, _, _)| *known == name)
                .ok_or_else(|| format!("unknown flag --{name} (see --help)"))?;
            let is_bool = BOOLEANS.contains(name);
            let value = match inline {
                Some(value) => value,
                // A bare boolean means true, unless an explicit value follows.
                None if is_bool => match args.next_if(|next| next == "true" || next == "false") {
                    Some(value) => value,
                    None => "true".to_string(),
                },
                None => args.next().ok_or_else(|| format!("flag --{name} needs a value"))?,
            };
            values.insert(name, value);
        }
        let get = |name: &str| match values.get(name) {
            Some(value) => value.clone(),
            None => FLAGS.iter().find(|flag| flag.0 == name).map_or("", |flag| flag.1).to_string(),
        };
        let secure = boolean("secure", &get("secure"))?;
        let port = match values.get("port") {
            None if secure => 443,
            _ => number("port", &get("port"))?,
        };
        let config = Config {
            origin: get("origin"),
            port,
            jwt_expiry: number("jwt_expiry", &get("jwt_expiry"))?,
            jwt_secret: get("jwt_secret"),
            secure,
            auto_cert: boolean("auto_cert", &get("auto_cert"))?,
            key_path: get("key_path").into(),
            cert_path: get("cert_path").into(),
            certs: get("certs").into(),
            db: get("db").into(),
            domain: get("domain"),
            admin_token: get("admin_token"),
            keep_alive: number("keep_alive", &get("keep_alive"))?,
            max_body: number("max_body", &get("max_body"))?,
            ntp_servers: get("ntp_servers")
                .split(',')
                .filter(|server| !server.is_empty())
                .map(String::from)
                .collect(),
            ntp_interval: number("ntp_interval", &get("ntp_interval"))?,
            acme_directory: get("acme_directory"),
            acme_ca: Some(get("acme_ca")).filter(|path| !path.is_empty()).map(PathBuf::from),
        };
        if config.jwt_expiry == 0 || config.ntp_interval == 0 {
            return Err("--jwt_expiry and --ntp_interval must be positive".into());
        }
        if config.secure && config.auto_cert && config.domain.is_empty() {
            return Err("--secure with --auto_cert needs --domain".into());
        }
        if config.admin_token.is_empty() || config.jwt_secret.is_empty() {
            return Err("--admin_token and --jwt_secret must not be empty".into());
        }
        Ok(config)
    }

    /// The flags still at their published defaults that an attacker would try first.
    pub fn default_secrets(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.admin_token == "letmein" {
            names.push("admin_token");
        }
        if self.jwt_secret == "secret" {
            names.push("jwt_secret");
        }
        names
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for --{name}: expected a number"))
}

fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid value {value:?} for --{name}: expected true or false")),
    }
}

fn print_help() {
    println!("broker: a real-time backend in one binary\n\nFlags (also BROKER_<NAME> in the environment):");
    for (name, default, help) in FLAGS {
        println!("  --{name:<16} {help} (default {default:?})");
    }
}

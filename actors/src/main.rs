//! `pua-xmpp` command line: load and validate the configuration, set up logging, run the
//! gateway. Configuration errors exit with status 2 and name the key at fault.

use pua_xmpp_actors::config::Config;

/// mimalloc instead of glibc malloc: the update path allocates and frees small blocks across
/// threads, where glibc spent about a sixth of the gateway's CPU (perf, 50,000 NOTIFYs/s);
/// with it one instance carries 150,000 updates/s instead of 120,000 (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// From the mimalloc linked in by the `mimalloc` crate (libmimalloc-sys's `extended` API,
// declared here to avoid its extra dependency).
extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_arena_eager_commit` of mimalloc 3 (`mimalloc.h`, `mi_option_e`).
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

/// Commit arena memory as it is used rather than up front: a million idle subscriptions then
/// cost what they use (0.76 KB each at N = 100,000 instead of 0.97 KB). The environment
/// (`MIMALLOC_ARENA_EAGER_COMMIT`) still wins. (`MIMALLOC_PURGE_DELAY=0` saves another
/// 40 bytes per subscription but costs throughput: every freed page is given back at once.)
///
/// Runs from `.init_array` with a high priority: before mimalloc's own start-up (which reads
/// its options once) and before the first Rust allocation; set from `main` it came too late
/// for the first arena (0.85 KB per subscription).
extern "C" fn tune_allocator() {
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: sets one integer option of the allocator; allowed before its start-up.
        unsafe { mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

#[used]
#[link_section = ".init_array.00101"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
pua-xmpp: SIP <-> XMPP presence gateway

USAGE:
    pua-xmpp [--config FILE]        run the gateway
    pua-xmpp check-config [FILE]    print the effective configuration (secrets redacted)
    pua-xmpp --version
    pua-xmpp --help

Configuration: built-in defaults, then FILE (TOML), then environment variables
PUA_XMPP__SECTION__KEY (e.g. PUA_XMPP__XMPP__SECRET). Logging: RUST_LOG overrides log.level.
";

enum Command {
    Run(Option<PathBuf>),
    Check(Option<PathBuf>),
    Version,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut check = false;
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--config" | "-c" => {
                let f = args
                    .get(i + 1)
                    .ok_or_else(|| format!("{a} needs a file name"))?;
                config = Some(PathBuf::from(f));
                i += 1;
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            "check-config" if !check => check = true,
            s if check && config.is_none() && !s.starts_with('-') => {
                config = Some(PathBuf::from(s));
            }
            s => return Err(format!("unexpected argument {s:?}")),
        }
        i += 1;
    }
    Ok(if check {
        Command::Check(config)
    } else {
        Command::Run(config)
    })
}

/// Installs the tracing subscriber: `RUST_LOG` wins over `log.level`.
fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).unwrap_or_else(|_| EnvFilter::new(&cfg.log.level))
        }
        _ => EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let res = if cfg.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = res {
        eprintln!("pua-xmpp: could not install the logger: {e}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pua-xmpp: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("pua-xmpp {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(path) => match Config::load(path.as_deref()) {
            Ok(cfg) => {
                print!("{}", cfg.redacted());
                if cfg.uses_default_secret() {
                    eprintln!("pua-xmpp: WARNING: xmpp.secret is the built-in default \"secret\"; set PUA_XMPP__XMPP__SECRET");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pua-xmpp: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run(path) => {
            let cfg = match Config::load(path.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pua-xmpp: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                config = %path
                    .as_deref()
                    .map_or("(none: defaults and environment)".into(), |p| p.display().to_string()),
                component = %cfg.xmpp.component_domain,
                xmpp_server = %cfg.xmpp.server,
                sip_listen = %cfg.sip.listen,
                mode = %cfg.presence.mode,
                "pua-xmpp starting"
            );
            if cfg.uses_default_secret() {
                tracing::warn!(
                    "xmpp.secret is the built-in default \"secret\": anyone who can reach the XMPP \
                     server's component port can impersonate this gateway. Set xmpp.secret or \
                     PUA_XMPP__XMPP__SECRET"
                );
            }
            match pua_xmpp_actors::gateway::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "pua-xmpp stopped with an error");
                    eprintln!("pua-xmpp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

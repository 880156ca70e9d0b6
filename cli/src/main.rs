//! The `nexus` binary: parses arguments and calls into `nexus_cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nexus_cli::client::{ClientOpts, RunCommand};
use nexus_cli::config::{Overrides, StandaloneConfig};

/// Nexus: a run scheduler for machine-learning, optimization and AI algorithms.
///
/// Clients submit runs of algorithms over the HTTP v1 API and get a request id at once; Nexus
/// executes each run (as a local process in standalone mode) and hands the result back through a
/// signed URL.
#[derive(Debug, Parser)]
#[command(
    name = "nexus",
    version,
    after_help = "Start here:\n  nexus standalone --templates examples/templates\n  nexus run submit knapsack --params examples/payloads/knapsack.json --wait"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs scheduler, receiver and supervisor in one process (embedded store, local processes).
    ///
    /// Configuration is layered: defaults, then the YAML file given with --config, then
    /// NEXUS__SECTION__KEY environment variables (e.g. NEXUS__SCHEDULER__QUEUE_BOUND=1000), then
    /// these flags. Use --dump-config to see the result.
    #[command(
        after_help = "Example:\n  nexus standalone --templates examples/templates --data .nexus-data --listen 127.0.0.1:8090"
    )]
    Standalone {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Directory of NexusAlgorithmTemplate / NexusAlgorithmWorkgroup YAML manifests (reloaded on change).
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Address to serve the HTTP API on (keep it on loopback: standalone has no API authentication).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Directory for the run store, payloads, results, logs and the signing key.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Run store: `embedded` (SQLite in --data, default) or a Cassandra / ScyllaDB URL such as
        /// cassandra://127.0.0.1:9042/nexus (see `nexus store --help` for its options).
        #[arg(long)]
        store: Option<String>,
        /// Payloads, results and logs: `embedded` (in --data, default) or an S3 URL such as
        /// s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1 (keys from
        /// NEXUS_S3_ACCESS_KEY_ID / NEXUS_S3_SECRET_ACCESS_KEY or the AWS credential chain).
        #[arg(long)]
        payloads: Option<String>,
        /// URL algorithms and clients use to reach this process (default http://<listen>).
        #[arg(long)]
        public_url: Option<String>,
        /// Print the effective configuration as YAML and exit.
        #[arg(long)]
        dump_config: bool,
    },
    /// Payload store maintenance (the S3 bucket's retention rule).
    Payloads {
        #[command(subcommand)]
        command: nexus_cli::payloads_cmd::PayloadsCommand,
    },
    /// Prints or applies the run store's schema (Cassandra / ScyllaDB).
    Store {
        #[command(subcommand)]
        command: nexus_cli::store_cmd::StoreCommand,
    },
    /// Submits, inspects, waits for and cancels runs on a Nexus server.
    Run {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        command: RunCommand,
    },
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NEXUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

async fn standalone(config: StandaloneConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (is another nexus running? use --listen)",
                config.listen
            )
        })?;
    let handle = nexus_cli::standalone::start(config, listener).await?;
    eprintln!(
        "nexus standalone serving on {} (Ctrl-C to stop)",
        handle.url
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: draining the queue (a second signal exits at once)");
    handle.shutdown.cancel();
    tokio::select! {
        () = handle.wait() => {}
        _ = tokio::signal::ctrl_c() => std::process::exit(130),
        _ = term.recv() => std::process::exit(143),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Standalone {
            config,
            templates,
            listen,
            data,
            store,
            payloads,
            public_url,
            dump_config,
        } => {
            let o = Overrides {
                listen,
                data_dir: data,
                store,
                payloads,
                templates_dir: templates,
                public_url,
            };
            let cfg = match StandaloneConfig::load(config.as_deref(), &o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if dump_config {
                match serde_yaml::to_string(&cfg) {
                    Ok(y) => print!("{y}"),
                    Err(e) => eprintln!("error: {e}"),
                }
                return ExitCode::SUCCESS;
            }
            init_logs(cfg.log_format == "json");
            match rt.block_on(standalone(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Payloads { command } => match rt.block_on(nexus_cli::payloads_cmd::run(command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Store { command } => match rt.block_on(nexus_cli::store_cmd::run(command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { opts, command } => match rt.block_on(nexus_cli::client::run(&opts, command))
        {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

//! The `nexus` binary: parses arguments and calls into `nexus_cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nexus_cli::client::{ClientOpts, RunCommand};
use nexus_cli::config::{Overrides, StandaloneConfig};
use nexus_cli::distributed::{
    self, DistOverrides, ReceiverProcess, SchedulerProcess, SupervisorProcess,
};

/// Nexus: a run scheduler for machine-learning, optimization and AI algorithms.
///
/// Clients submit runs of algorithms over the HTTP v1 API and get a request id at once; Nexus
/// executes each run (as a Kubernetes Job in a shard cluster, or as a local process) and hands the
/// result back through a signed URL.
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
        /// Address to serve the HTTP API on (beyond loopback, configure `auth`: docs/AUTH.md).
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
    /// Distributed mode: the HTTP v1 API, virtual queue and dispatcher, sending runs over gRPC to
    /// the receivers of each shard.
    ///
    /// Shares with every other component a Cassandra run store (--store), an S3 payload store
    /// (--payloads), a signing key (signing_key_file or NEXUS_SIGNING_KEY) and gRPC credentials
    /// (section `grpc`: a shared secret from NEXUS_GRPC_SECRET or secret_file, or mutual TLS).
    /// Several schedulers run behind a round-robin load balancer and share each shard's budget.
    #[command(
        after_help = "Example (scheduler.yaml):\n  store: cassandra://10.0.0.7:9042/nexus\n  payloads: s3://nexus-payloads/runs?region=eu-west-1\n  signing_key_file: /etc/nexus/signing.key\n  grpc: {auth: shared-secret, secret_file: /etc/nexus/grpc.secret}\n  templates_dir: /etc/nexus/templates\n  shards:\n    shard-a: {endpoints: ['http://receiver-a-0:9091', 'http://receiver-a-1:9091']}\n\n  nexus scheduler --config scheduler.yaml --listen 0.0.0.0:8080 --public-url http://nexus.internal"
    )]
    Scheduler {
        #[command(flatten)]
        common: DistFlags,
        /// Directory of NexusAlgorithmTemplate / NexusAlgorithmWorkgroup manifests (reloaded on change).
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Payload store URL (s3://bucket/prefix?...).
        #[arg(long)]
        payloads: Option<String>,
        /// URL algorithms use to reach the schedulers (their load balancer).
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Distributed mode: serves one shard, takes runs over gRPC (nexus.v1.ShardService), launches
    /// them (Kubernetes Jobs with `runtime: kubernetes`, or local processes), watches
    /// them, and takes their completions (HTTP and gRPC).
    #[command(
        after_help = "Example:\n  nexus receiver --config receiver.yaml --shard shard-a --listen 0.0.0.0:8091 --grpc-listen 0.0.0.0:9091"
    )]
    Receiver {
        #[command(flatten)]
        common: DistFlags,
        /// The shard (workgroup spec.cluster) this receiver serves.
        #[arg(long)]
        shard: Option<String>,
        /// gRPC address (ShardService, CompletionService, grpc.health.v1).
        #[arg(long)]
        grpc_listen: Option<std::net::SocketAddr>,
        /// Payload store URL (s3://bucket/prefix?...).
        #[arg(long)]
        payloads: Option<String>,
        /// URL algorithms use to reach this receiver's HTTP completion endpoint.
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Distributed mode: hands runs orphaned by lost schedulers (BUFFERED) and lost receivers
    /// (RUNNING) to their shard again, cancels the subtrees of failed parents and removes expired
    /// runs. It serves no API: its HTTP port has only /health/livez, /health/readyz and /metrics.
    #[command(
        after_help = "Example:\n  nexus supervisor --config supervisor.yaml --scheduler-url http://nexus.internal"
    )]
    Supervisor {
        #[command(flatten)]
        common: DistFlags,
        /// Directory of template / workgroup manifests.
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Base URL of the schedulers (payload URLs of resubmitted runs point there).
        #[arg(long)]
        scheduler_url: Option<String>,
    },
    /// Prints the NexusAlgorithmTemplate and NexusAlgorithmWorkgroup CustomResourceDefinitions
    /// (YAML, generated from Nexus' own types, with schema validation of required fields,
    /// quantities, durations and names).
    #[command(
        after_help = "Examples:\n  nexus crd | kubectl apply -f -\n  nexus crd --apply --kubeconfig ~/.kube/config --context prod-shard-1"
    )]
    Crd {
        /// Install (or update) them in the cluster instead of printing them, and wait until the
        /// API server serves them.
        #[arg(long)]
        apply: bool,
        /// Kubeconfig for --apply (default: in-cluster, then $KUBECONFIG, then ~/.kube/config).
        #[arg(long, requires = "apply")]
        kubeconfig: Option<PathBuf>,
        /// Context of the kubeconfig for --apply (default: its current context).
        #[arg(long, requires = "apply")]
        context: Option<String>,
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
    /// Internal: confines this process (no_new_privs, Landlock) and executes an algorithm in its
    /// place. The local executor starts algorithms through it.
    #[command(hide = true)]
    SandboxExec(nexus_cli::sandbox::SandboxExecArgs),
    /// API keys for service accounts: `new` prints a random key and the entry that grants it
    /// (the configuration keeps only its SHA-256); `hash` prints the SHA-256 of a key read from
    /// stdin.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The secrets every component of a distributed deployment shares: `init` writes a signing
    /// key and a gRPC secret into a directory (kept when they exist) and prints the environment
    /// that points every component at them, so a component restarted from another shell uses
    /// the same ones.
    #[command(
        after_help = "Example:\n  eval \"$(nexus secrets init)\"   # in every shell that starts a component"
    )]
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Submits, inspects, waits for and cancels runs on a Nexus server.
    Run {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        command: RunCommand,
    },
}

/// `nexus secrets …`.
#[derive(Debug, clap::Subcommand)]
enum SecretsCommand {
    /// Creates `signing.key` (48 random bytes, base64) and `grpc.secret` (24 random bytes,
    /// base64) in DIR, readable by the owner only, unless they already exist; prints the
    /// `export` lines (NEXUS__SIGNING_KEY_FILE, NEXUS__GRPC__SECRET_FILE) on stdout.
    Init {
        /// Where the files live.
        #[arg(long, default_value = ".nexus-secrets")]
        dir: PathBuf,
    },
}

/// `nexus api-key …`.
#[derive(Debug, clap::Subcommand)]
enum ApiKeyCommand {
    /// Prints a new key (give it to the service account; it is not stored anywhere) and the
    /// `auth.api_keys` entry to add to the configuration or the key file.
    New {
        /// The subject the key authenticates as (named in `auth.rules[].subjects`).
        #[arg(long)]
        name: String,
        /// A group of the key (named in `auth.rules[].groups`); repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Prints the SHA-256 of a key read from stdin (to rebuild an entry).
    Hash,
}

/// Flags shared by the distributed commands.
#[derive(Debug, clap::Args)]
struct DistFlags {
    /// YAML configuration file (then NEXUS__SECTION__KEY environment variables, then flags).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// HTTP address: the v1 API (scheduler) or the completion endpoint (receiver), and
    /// /health/livez, /health/readyz, /metrics (every component; the supervisor serves only these).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Run store URL (cassandra://host:9042/keyspace?...).
    #[arg(long)]
    store: Option<String>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    dump_config: bool,
}

/// `--dump-config` of a distributed command: the layered configuration even while it is not
/// complete (what is still missing goes to stderr), so every key and default can be seen before
/// the first start.
fn dump_layered<C: nexus_cli::config::Layered>(
    file: Option<&std::path::Path>,
    overrides: &impl serde::Serialize,
) -> ExitCode {
    match nexus_cli::config::load_layered(C::default(), file, overrides) {
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            ExitCode::from(2)
        }
        Ok(c) => {
            let code = dump(&c);
            if let Err(e) = c.validate() {
                eprintln!("# not complete yet (the process would refuse to start): {e}");
            }
            code
        }
    }
}

fn dump<T: serde::Serialize>(c: &T) -> ExitCode {
    match serde_yaml::to_string(c) {
        Ok(y) => {
            print!("{y}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn until_signal(
    shutdown: &tokio_util::sync::CancellationToken,
) -> std::io::Result<tokio::signal::unix::Signal> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down gracefully (a second signal exits at once)");
    shutdown.cancel();
    Ok(term)
}

async fn wait_or_exit(
    handle: &nexus_cli::standalone::Handle,
    mut term: tokio::signal::unix::Signal,
) {
    tokio::select! {
        () = handle.wait() => {}
        _ = tokio::signal::ctrl_c() => std::process::exit(130),
        _ = term.recv() => std::process::exit(143),
    }
}

async fn run_scheduler(c: SchedulerProcess) -> anyhow::Result<()> {
    let l = distributed::bind(c.listen, "listen").await?;
    let h = distributed::start_scheduler(c, l).await?;
    eprintln!("nexus scheduler serving on {} (Ctrl-C to stop)", h.url);
    let term = until_signal(&h.shutdown).await?;
    wait_or_exit(&h, term).await;
    Ok(())
}

async fn run_receiver(c: ReceiverProcess) -> anyhow::Result<()> {
    let http = distributed::bind(c.listen, "listen").await?;
    let grpc = distributed::bind(c.grpc_listen, "grpc_listen").await?;
    let h = distributed::start_receiver(c, http, grpc).await?;
    eprintln!(
        "nexus receiver {} serving HTTP on {} and gRPC on {} (Ctrl-C to stop)",
        h.id, h.http.url, h.grpc_addr
    );
    let term = until_signal(&h.http.shutdown).await?;
    wait_or_exit(&h.http, term).await;
    Ok(())
}

async fn run_supervisor(c: SupervisorProcess) -> anyhow::Result<()> {
    let l = distributed::bind(c.listen, "listen").await?;
    let h = distributed::start_supervisor(c, l).await?;
    eprintln!(
        "nexus supervisor serving health and metrics on {} (Ctrl-C to stop)",
        h.url
    );
    let term = until_signal(&h.shutdown).await?;
    wait_or_exit(&h, term).await;
    Ok(())
}

/// Runs a command: a configuration error exits 2, otherwise logs start and `run` serves until a
/// signal.
fn launch<C, F: std::future::Future<Output = anyhow::Result<()>>>(
    rt: &tokio::runtime::Runtime,
    loaded: Result<C, String>,
    json_logs: impl FnOnce(&C) -> bool,
    run: impl FnOnce(C) -> F,
) -> ExitCode {
    let c = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(json_logs(&c));
    finish(rt.block_on(run(c)))
}

fn finish(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NEXUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

async fn run_standalone(config: StandaloneConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (is another nexus running? use --listen)",
                config.listen
            )
        })?;
    let h = nexus_cli::standalone::start(config, listener).await?;
    eprintln!("nexus standalone serving on {} (Ctrl-C to stop)", h.url);
    let term = until_signal(&h.shutdown).await?;
    wait_or_exit(&h, term).await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SandboxExec(args) = cli.command {
        // Before any runtime or thread exists: this process becomes the algorithm. 126, as a
        // shell does for a command it found but could not execute.
        return match nexus_cli::sandbox::sandbox_exec(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexus sandbox-exec: {e:#}");
                ExitCode::from(126)
            }
        };
    }
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
            if dump_config {
                return dump_layered::<StandaloneConfig>(config.as_deref(), &o);
            }
            let loaded = StandaloneConfig::load(config.as_deref(), &o);
            launch(&rt, loaded, |c| c.log_format == "json", run_standalone)
        }
        Command::Scheduler {
            common,
            templates,
            payloads,
            public_url,
        } => {
            let o = DistOverrides {
                listen: common.listen,
                store: common.store,
                payloads,
                templates_dir: templates,
                public_url,
                ..DistOverrides::default()
            };
            if common.dump_config {
                return dump_layered::<SchedulerProcess>(common.config.as_deref(), &o);
            }
            let loaded = SchedulerProcess::load(common.config.as_deref(), &o);
            launch(&rt, loaded, |c| c.log_format == "json", run_scheduler)
        }
        Command::Receiver {
            common,
            shard,
            grpc_listen,
            payloads,
            public_url,
        } => {
            let o = DistOverrides {
                listen: common.listen,
                store: common.store,
                grpc_listen,
                shard,
                payloads,
                public_url,
                ..DistOverrides::default()
            };
            if common.dump_config {
                return dump_layered::<ReceiverProcess>(common.config.as_deref(), &o);
            }
            let loaded = ReceiverProcess::load(common.config.as_deref(), &o);
            launch(&rt, loaded, |c| c.log_format == "json", run_receiver)
        }
        Command::Supervisor {
            common,
            templates,
            scheduler_url,
        } => {
            let o = DistOverrides {
                listen: common.listen,
                store: common.store,
                templates_dir: templates,
                scheduler_url,
                ..DistOverrides::default()
            };
            if common.dump_config {
                return dump_layered::<SupervisorProcess>(common.config.as_deref(), &o);
            }
            let loaded = SupervisorProcess::load(common.config.as_deref(), &o);
            launch(&rt, loaded, |c| c.log_format == "json", run_supervisor)
        }
        Command::Crd {
            apply: true,
            kubeconfig,
            context,
        } => {
            let config = nexus_kube::client::KubeClientConfig {
                kubeconfig,
                context,
                ..nexus_kube::client::KubeClientConfig::default()
            };
            let result = rt.block_on(async {
                let budget = nexus_kube::client::ApiBudget::new(config.api_budget);
                let client = nexus_kube::client::client(&config, &budget).await?;
                nexus_kube::crd::install(&client, std::time::Duration::from_secs(30)).await
            });
            match result {
                Ok(()) => {
                    eprintln!(
                        "installed nexusalgorithmtemplates and nexusalgorithmworkgroups (science.sneaksanddata.com/v1)"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crd { .. } => match nexus_model::crd::crds_yaml() {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
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
        Command::ApiKey { command } => api_key(command),
        Command::Secrets {
            command: SecretsCommand::Init { dir },
        } => match nexus_cli::secrets::init(&dir) {
            Ok(lines) => {
                print!("{lines}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::SandboxExec(_) => unreachable!("handled before the runtime starts"),
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

/// `nexus api-key new|hash`.
fn api_key(command: ApiKeyCommand) -> ExitCode {
    match command {
        ApiKeyCommand::New { name, groups } => {
            let entry = nexus_auth::config::ApiKeyEntry {
                name,
                sha256: String::new(),
                groups,
            };
            let key = nexus_auth::apikey::generate();
            let entry = nexus_auth::config::ApiKeyEntry {
                sha256: nexus_auth::apikey::hash(&key),
                ..entry
            };
            if let Err(m) = entry.validate() {
                eprintln!("error: {m}");
                return ExitCode::FAILURE;
            }
            match serde_yaml::to_string(&vec![entry]) {
                Ok(yaml) => {
                    eprintln!(
                        "# the key (shown once; give it to the service account as NEXUS_TOKEN):"
                    );
                    println!("{key}");
                    eprintln!("# its entry for auth.api_keys.keys or an API key file:");
                    eprint!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ApiKeyCommand::Hash => {
            let mut key = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut key) {
                eprintln!("error: cannot read the key from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let key = key.trim();
            if key.is_empty() {
                eprintln!(
                    "error: no key on stdin (e.g. `printf %s \"$KEY\" | nexus api-key hash`)"
                );
                return ExitCode::FAILURE;
            }
            println!("{}", nexus_auth::apikey::hash(key));
            ExitCode::SUCCESS
        }
    }
}

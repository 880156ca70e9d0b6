//! `nexus store`: the run store's schema for a DBA, and explicit migrations.

use clap::Subcommand;
use nexus_store::cassandra::{self, CassandraConfig};

/// Subcommands of `nexus store`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Prints the Cassandra / ScyllaDB schema (CQL) for a keyspace, to review or apply by hand.
    ///
    /// Servers apply the same migrations themselves at start-up unless their store URL says
    /// migrate=false; applying them by hand first lets a DBA keep schema changes under review.
    #[command(
        after_help = "Examples:\n  nexus store schema --url 'cassandra://db1:9042/nexus?replication=NetworkTopologyStrategy:eu1=3'\n  nexus store schema --url cassandra://localhost/nexus > nexus.cql"
    )]
    Schema {
        /// Store URL (only the keyspace and the replication option are used; nothing is contacted).
        #[arg(long, env = "NEXUS_STORE")]
        url: String,
    },
    /// Connects and applies the migrations the keyspace lacks (creating it if needed).
    ///
    /// Safe to run while servers start: every statement is idempotent and tables have fixed ids.
    #[command(
        after_help = "Example:\n  nexus store migrate --url cassandra://127.0.0.1:9042/nexus"
    )]
    Migrate {
        /// Store URL, e.g. cassandra://user@db1:9042,db2:9042/nexus?dc=eu1 (password from
        /// NEXUS_CASSANDRA_PASSWORD).
        #[arg(long, env = "NEXUS_STORE")]
        url: String,
    },
}

fn parse(url: &str) -> anyhow::Result<CassandraConfig> {
    CassandraConfig::from_url(url).map_err(|e| anyhow::anyhow!("invalid store URL: {e}"))
}

/// Runs a `nexus store` subcommand.
///
/// # Errors
/// Invalid URL, unreachable store, failing statement.
pub async fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Schema { url } => {
            let c = parse(&url)?;
            print!("{}", cassandra::schema::script(&c.keyspace, &c.replication));
        }
        StoreCommand::Migrate { url } => {
            let c = parse(&url)?;
            eprintln!(
                "connecting to {} (keyspace {}) …",
                c.contact_points.join(","),
                c.keyspace
            );
            let session = cassandra::connect(&c)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let applied = cassandra::migrate(&session, &c)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if applied.is_empty() {
                eprintln!("keyspace {} is up to date", c.keyspace);
            } else {
                for v in applied {
                    eprintln!("applied migration {v}");
                }
            }
        }
    }
    Ok(())
}

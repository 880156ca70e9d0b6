//! `nexus payloads`: the S3 bucket's retention rule.

use std::time::Duration;

use clap::Subcommand;
use nexus_payload::{S3Config, S3PayloadStore};

/// Subcommands of `nexus payloads`.
#[derive(Debug, Subcommand)]
pub enum PayloadsCommand {
    /// Prints (or, with --apply, installs) the bucket lifecycle rule that deletes payloads,
    /// results and logs past their retention.
    ///
    /// Retention of objects in S3 is the bucket's job: the rule expires everything under the
    /// store's prefix `retention` (rounded up to whole days) after it was written, and aborts
    /// multipart uploads left incomplete for a day. Keep the retention longer than a run's
    /// longest wait in the queue plus its run time. Without --apply the rule is printed as the
    /// JSON `aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration` takes;
    /// --apply installs it, keeping the bucket's other rules.
    #[command(
        after_help = "Examples:\n  nexus payloads lifecycle --url s3://nexus-data/prod --retention 7d\n  nexus payloads lifecycle --url 's3://nexus-data/prod?region=eu-west-1' --retention 30d --apply"
    )]
    Lifecycle {
        /// Payload store URL (s3://bucket/prefix?…; keys from NEXUS_S3_ACCESS_KEY_ID /
        /// NEXUS_S3_SECRET_ACCESS_KEY or the AWS credential chain).
        #[arg(long, env = "NEXUS_PAYLOADS")]
        url: String,
        /// How long objects are kept, e.g. 7d or 720h.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// Install the rule on the bucket instead of printing it.
        #[arg(long)]
        apply: bool,
    },
}

/// Runs a `nexus payloads` subcommand.
///
/// # Errors
/// Invalid URL, unreachable or refusing bucket.
pub async fn run(cmd: PayloadsCommand) -> anyhow::Result<()> {
    match cmd {
        PayloadsCommand::Lifecycle {
            url,
            retention,
            apply,
        } => {
            let c = S3Config::from_url(&url).map_err(|e| anyhow::anyhow!("invalid URL: {e}"))?;
            let store = S3PayloadStore::open(&c)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if apply {
                let days = store
                    .apply_lifecycle(retention)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                eprintln!(
                    "rule {} installed on bucket {}: objects expire {days} day(s) after they are written",
                    store.lifecycle_rule_id(),
                    c.bucket
                );
            } else {
                println!("{}", store.lifecycle_json(retention));
            }
        }
    }
    Ok(())
}

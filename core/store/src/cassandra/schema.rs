//! The CQL schema as versioned migrations, applied at start-up (`migrate=true`) or printed for a
//! DBA (`nexus store schema`).
//!
//! # Safe with several instances starting at once
//! Cassandra 5 spreads schema changes by gossip: two nodes creating the same table at the same
//! moment would give it two different table ids and leave the cluster disagreeing about it
//! (CASSANDRA-5202). Every table is therefore created `WITH ID = <UUIDv5 of keyspace.table>`:
//! concurrent `CREATE TABLE IF NOT EXISTS` from any number of instances describe the *same* table
//! and converge. Keyspaces have no id. After each statement the driver waits for schema
//! agreement. Every statement is idempotent, so a migration interrupted half-way is simply run
//! again; its version is recorded in `schema_migrations` once all its statements succeeded.
//!
//! # Tables
//! * `runs`: the record (JSON), plus the columns compare-and-set and the lookups need (`stage`,
//!   `owner`, `tag`, `version`). Created with `UPDATE` (no row marker), so that when a finished
//!   run's cells expire (TTL = retention) the whole row disappears.
//! * `runs_by_owner_stage`, `runs_by_tag`, `runs_by_parent`: lookup tables (see the store's docs
//!   for how they are kept consistent). Clustered by the run id's bytes: UUIDv7 ids sort by
//!   acceptance time, so lookups return runs oldest first with no extra column. Lookup rows are
//!   hints verified against `runs`, so a resurrected deleted row is harmless: their
//!   `gc_grace_seconds` is short (3 h) and tombstones do not pile up in busy partitions.
//! * `owners_by_stage`: which owners may have runs in a stage (the orphan finder's entry point).
//! * `runs_by_time`, `run_buckets`: the listing's index (newest first by dimension and hour,
//!   and the hours each dimension has rows in); see the store's `listing` module.
//! * `idempotency_keys`: (algorithm, key) → run id and its first record, claimed by LWT (a batch
//!   key claims `(algorithm, "<key> #batch")` → the batch id).
//! * `run_batches`: the records of a batch submit, written before the batch is decided, and
//!   `pending_batches`: the batches decided but not yet expanded into `runs` (see the store's
//!   `batch` module).
//! * `leases`: owner → expiry, all in one partition.
//! * `leaders`: leadership name → holder and expiry, changed only by lightweight transactions.
//! * `schema_migrations`: applied versions.

use uuid::Uuid;

use super::config::Replication;

/// One schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Monotonic version.
    pub version: i32,
    /// What it does.
    pub description: &'static str,
    /// CQL statements; `{ks}` is the keyspace, `{id:<table>}` the table's deterministic id.
    pub statements: &'static [&'static str],
}

/// Lookup tables hold hints: short tombstone grace (see the module docs).
const HINT_GRACE: &str = "gc_grace_seconds = 10800";

/// Every migration, oldest first. Never edit a released one: add a new one.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "runs, lookup tables, idempotency keys, leases",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.runs (
    id uuid PRIMARY KEY,
    stage text,
    owner text,
    tag text,
    version bigint,
    record blob
) WITH ID = {id:runs}",
            "CREATE TABLE IF NOT EXISTS {ks}.runs_by_owner_stage (
    owner text,
    stage text,
    id blob,
    version bigint,
    PRIMARY KEY ((owner, stage), id)
) WITH ID = {id:runs_by_owner_stage} AND {hint_grace}",
            "CREATE TABLE IF NOT EXISTS {ks}.runs_by_tag (
    tag text,
    id blob,
    PRIMARY KEY ((tag), id)
) WITH ID = {id:runs_by_tag} AND {hint_grace}",
            "CREATE TABLE IF NOT EXISTS {ks}.runs_by_parent (
    parent uuid,
    id blob,
    PRIMARY KEY ((parent), id)
) WITH ID = {id:runs_by_parent} AND {hint_grace}",
            "CREATE TABLE IF NOT EXISTS {ks}.owners_by_stage (
    stage text,
    owner text,
    PRIMARY KEY ((stage), owner)
) WITH ID = {id:owners_by_stage}",
            "CREATE TABLE IF NOT EXISTS {ks}.idempotency_keys (
    algorithm text,
    idem_key text,
    id uuid,
    record blob,
    PRIMARY KEY ((algorithm, idem_key))
) WITH ID = {id:idempotency_keys}",
            "CREATE TABLE IF NOT EXISTS {ks}.leases (
    scope text,
    owner text,
    expires_at bigint,
    PRIMARY KEY ((scope), owner)
) WITH ID = {id:leases}",
        ],
    },
    Migration {
        version: 2,
        description: "leaders (leader election by compare-and-set)",
        statements: &["CREATE TABLE IF NOT EXISTS {ks}.leaders (
    name text PRIMARY KEY,
    holder text,
    expires_at bigint
) WITH ID = {id:leaders}"],
    },
    Migration {
        version: 3,
        description: "listing index: runs by dimension and hour, hours by dimension",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.runs_by_time (
    dim text,
    bucket bigint,
    spread tinyint,
    id blob,
    PRIMARY KEY ((dim, bucket, spread), id)
) WITH ID = {id:runs_by_time} AND CLUSTERING ORDER BY (id DESC) AND {hint_grace}",
            "CREATE TABLE IF NOT EXISTS {ks}.run_buckets (
    dim text,
    bucket bigint,
    PRIMARY KEY ((dim), bucket)
) WITH ID = {id:run_buckets} AND CLUSTERING ORDER BY (bucket DESC)",
        ],
    },
    Migration {
        version: 4,
        description: "run batches (all-or-none batch submit) and the batches to complete",
        statements: &[
            "CREATE TABLE IF NOT EXISTS {ks}.run_batches (
    batch_id uuid,
    idx int,
    record blob,
    algorithm text static,
    idem_key text static,
    size int static,
    PRIMARY KEY ((batch_id), idx)
) WITH ID = {id:run_batches}",
            "CREATE TABLE IF NOT EXISTS {ks}.pending_batches (
    scope text,
    batch_id uuid,
    PRIMARY KEY ((scope), batch_id)
) WITH ID = {id:pending_batches}",
        ],
    },
];

/// The table that records applied versions (created before any migration).
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
    version int PRIMARY KEY,
    description text,
    applied_at timestamp
) WITH ID = {id:schema_migrations}";

/// The deterministic id of `keyspace.table` (UUIDv5 in the URL namespace of a nexus URN).
#[must_use]
pub(crate) fn table_id(keyspace: &str, table: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("urn:nexus:cassandra:{keyspace}.{table}").as_bytes(),
    )
}

/// Fills `{ks}`, `{hint_grace}` and every `{id:<table>}` in `stmt`.
#[must_use]
pub fn render(stmt: &str, keyspace: &str) -> String {
    let mut out = stmt
        .replace("{ks}", keyspace)
        .replace("{hint_grace}", HINT_GRACE);
    while let Some(start) = out.find("{id:") {
        let Some(len) = out[start..].find('}') else {
            break;
        };
        let table = out[start + 4..start + len].to_owned();
        out.replace_range(
            start..=start + len,
            &format!("'{}'", table_id(keyspace, &table)),
        );
    }
    out
}

/// `CREATE KEYSPACE` for `keyspace`.
#[must_use]
pub(crate) fn create_keyspace(keyspace: &str, replication: &Replication) -> String {
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {} AND durable_writes = true",
        replication.cql()
    )
}

/// The statement creating the migrations table.
#[must_use]
pub(crate) fn migrations_table(keyspace: &str) -> String {
    render(MIGRATIONS_TABLE, keyspace)
}

/// The whole schema as a CQL script, for a DBA to review or apply by hand.
#[must_use]
pub fn script(keyspace: &str, replication: &Replication) -> String {
    let mut s = format!(
        "-- Nexus run store schema for keyspace {keyspace} (version {}).\n\
         -- Table ids are fixed so that concurrent creation converges; keep them when applying by hand.\n\n{};\n\n{};\n",
        MIGRATIONS.last().map_or(0, |m| m.version),
        create_keyspace(keyspace, replication),
        migrations_table(keyspace),
    );
    for m in MIGRATIONS {
        s.push_str(&format!(
            "\n-- migration {}: {}\n",
            m.version, m.description
        ));
        for st in m.statements {
            s.push_str(&render(st, keyspace));
            s.push_str(";\n");
        }
        s.push_str(&format!(
            "INSERT INTO {keyspace}.schema_migrations (version, description, applied_at) VALUES ({}, '{}', toTimestamp(now()));\n",
            m.version,
            m.description.replace('\'', "''")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(table_id("a", "runs"), table_id("a", "runs"));
        assert_ne!(table_id("a", "runs"), table_id("b", "runs"));
        assert_ne!(table_id("a", "runs"), table_id("a", "leases"));
    }

    #[test]
    fn render_fills_every_placeholder() {
        for m in MIGRATIONS {
            for st in m.statements {
                let r = render(st, "ks1");
                assert!(!r.contains('{') && !r.contains('}'), "unfilled: {r}");
                assert!(r.contains("ks1."), "{r}");
                assert!(r.contains("WITH ID = "), "{r}");
            }
        }
        let r = render(MIGRATIONS[0].statements[1], "ks1");
        assert!(
            r.contains(&format!(
                "WITH ID = '{}'",
                table_id("ks1", "runs_by_owner_stage")
            )),
            "{r}"
        );
        assert!(r.contains("gc_grace_seconds = 10800"), "{r}");
    }

    #[test]
    fn versions_increase() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last);
            last = m.version;
        }
    }

    #[test]
    fn script_is_complete() {
        let s = script("nexus", &Replication::Simple(3));
        assert!(s.contains("CREATE KEYSPACE IF NOT EXISTS nexus WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}"));
        for t in [
            "runs",
            "runs_by_owner_stage",
            "runs_by_tag",
            "runs_by_parent",
            "owners_by_stage",
            "idempotency_keys",
            "leases",
            "leaders",
            "runs_by_time",
            "run_buckets",
            "schema_migrations",
        ] {
            assert!(
                s.contains(&format!("CREATE TABLE IF NOT EXISTS nexus.{t} (")),
                "{t} missing"
            );
        }
        assert!(!s.contains("ALLOW FILTERING"));
        assert!(!s.contains("CREATE INDEX"));
    }
}

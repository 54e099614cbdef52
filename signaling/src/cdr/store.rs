//! Where CDRs live ([`Target`]) and the open, migrated database ([`Store`]): inserts, the
//! durable records of calls that are up, heartbeats and reads, on SQLite and PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use super::schema::{
    CDR_COLUMNS, CDR_MEDIA_COLUMNS, CLOSE_SQL, MIGRATIONS, Value, cdr_values, insert_sql,
    media_values,
};
use super::{Cdr, OpenCall};

/// An open call a stopped process left (see [`Store::orphans`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub call: OpenCall,
    /// The instance that kept it.
    pub instance: String,
    /// That instance's last heartbeat, by its own clock.
    pub alive_at_ms: i64,
}

/// A store error; `transient` ones (the database unreachable, a connection broken) are
/// retried, the others are reported as configuration or schema problems.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
    pub transient: bool,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let transient = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        Self {
            message: e.to_string(),
            transient,
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // Errors the server answered (bad password, missing database, SQL errors) are not
        // transient; everything about reaching it is.
        let transient = e.as_db_error().is_none();
        let message = e.as_db_error().map_or_else(
            || {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    text = format!("{text}: {inner}");
                    source = inner.source();
                }
                text
            },
            |db| format!("{}: {}", db.code().code(), db.message()),
        );
        Self { message, transient }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Self::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Self::Int(v) => ToSqlOutput::from(*v),
            Self::Real(v) => ToSqlOutput::from(*v),
            Self::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Self::Bool(v) => ToSqlOutput::from(*v),
        })
    }
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self {
            Self::Null => Ok(postgres::types::IsNull::Yes),
            Self::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) => v.to_sql(ty, out),
            Self::Real(v) => v.to_sql(ty, out),
            Self::Text(v) => v.to_sql(ty, out),
            Self::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        use postgres::types::Type;
        [
            Type::INT8,
            Type::INT4,
            Type::FLOAT8,
            Type::TEXT,
            Type::VARCHAR,
            Type::BOOL,
        ]
        .contains(ty)
    }

    postgres::types::to_sql_checked!();
}

/// Where CDRs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Target {
    /// Parses a `--cdr` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://cdr.db".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::Config::from_str(url).map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("expected sqlite://PATH or postgres://USER@HOST/DB".into())
    }

    /// The URL without a password, for logs.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let userinfo = &url[scheme + 3..at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                }
                _ => url.clone(),
            },
        }
    }
}

/// An open, migrated CDR database.
pub enum Store {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

impl Store {
    /// Connects (creating the SQLite file if needed) and applies pending migrations.
    pub fn open(target: &Target) -> Result<Self, StoreError> {
        let mut store = match target {
            Target::Sqlite(path) => {
                let connection = rusqlite::Connection::open(path)?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection.busy_timeout(Duration::from_secs(5))?;
                Self::Sqlite(connection)
            }
            Target::Postgres(url) => {
                let mut config = postgres::Config::from_str(url).map_err(|e| StoreError {
                    message: e.to_string(),
                    transient: false,
                })?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(Duration::from_secs(3));
                }
                config
                    .keepalives(true)
                    .keepalives_idle(Duration::from_secs(30))
                    .tcp_user_timeout(Duration::from_secs(15))
                    .application_name("signaling-cdr");
                Self::Postgres(Box::new(config.connect(postgres::NoTls)?))
            }
        };
        store.migrate()?;
        Ok(store)
    }

    fn id_column(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "id INTEGER PRIMARY KEY",
            Self::Postgres(_) => "id BIGSERIAL PRIMARY KEY",
        }
    }

    /// The schema version the database is at.
    pub fn version(&mut self) -> Result<usize, StoreError> {
        let sql = "SELECT COALESCE(MAX(version), 0) FROM schema_version";
        Ok(match self {
            Self::Sqlite(c) => c.query_row(sql, [], |r| r.get::<_, i64>(0))? as usize,
            Self::Postgres(c) => c.query_one(sql, &[])?.get::<_, i32>(0) as usize,
        })
    }

    /// Applies pending migrations, each in its own transaction. Several signaling instances
    /// sharing one PostgreSQL database serialise on an advisory lock.
    pub fn migrate(&mut self) -> Result<(), StoreError> {
        self.migrate_to(MIGRATIONS.len())
    }

    /// Applies migrations up to `version` (tests build older schemas with it).
    pub fn migrate_to(&mut self, version: usize) -> Result<(), StoreError> {
        let create = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)";
        let id = self.id_column();
        match self {
            Self::Sqlite(c) => {
                c.execute_batch(create)?;
                let current: i64 = c.query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                    [],
                    |r| r.get(0),
                )?;
                for (index, migration) in MIGRATIONS
                    .iter()
                    .enumerate()
                    .take(version)
                    .skip(current as usize)
                {
                    let transaction = c.transaction()?;
                    transaction.execute_batch(&migration.replace("{id}", id))?;
                    transaction.execute(
                        "INSERT INTO schema_version (version) VALUES (?1)",
                        [index as i64 + 1],
                    )?;
                    transaction.commit()?;
                }
            }
            Self::Postgres(c) => {
                let mut transaction = c.transaction()?;
                transaction.execute("SELECT pg_advisory_xact_lock(7411)", &[])?;
                transaction.batch_execute(create)?;
                let current: i32 = transaction
                    .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
                    .get(0);
                for (index, migration) in MIGRATIONS
                    .iter()
                    .enumerate()
                    .take(version)
                    .skip(current as usize)
                {
                    transaction.batch_execute(&migration.replace("{id}", id))?;
                    transaction.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)",
                        &[&(index as i32 + 1)],
                    )?;
                }
                transaction.commit()?;
            }
        }
        Ok(())
    }

    /// Inserts a call's `cdr` row and its `cdr_media` rows in one transaction. Returns false
    /// when the call was already stored (same `call_id` and `start_time`): nothing is written
    /// twice.
    pub fn insert(&mut self, cdr: &Cdr) -> Result<bool, StoreError> {
        static CDR_SQL: LazyLock<String> = LazyLock::new(|| insert_sql("cdr", CDR_COLUMNS));
        static MEDIA_SQL: LazyLock<String> =
            LazyLock::new(|| insert_sql("cdr_media", CDR_MEDIA_COLUMNS));
        let (cdr_sql, media_sql) = (CDR_SQL.as_str(), MEDIA_SQL.as_str());
        match self {
            Self::Sqlite(c) => {
                let transaction = c.transaction()?;
                let values = cdr_values(cdr);
                let inserted = transaction
                    .prepare_cached(cdr_sql)?
                    .execute(rusqlite::params_from_iter(values.iter()))?;
                if inserted > 0 {
                    for m in &cdr.media {
                        let values = media_values(cdr, m);
                        transaction
                            .prepare_cached(media_sql)?
                            .execute(rusqlite::params_from_iter(values.iter()))?;
                    }
                }
                transaction
                    .prepare_cached(CLOSE_SQL)?
                    .execute(rusqlite::params![cdr.call_id, cdr.start_time_ms])?;
                transaction.commit()?;
                Ok(inserted > 0)
            }
            Self::Postgres(c) => {
                let mut transaction = c.transaction()?;
                let values = cdr_values(cdr);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    values.iter().map(|v| v as _).collect();
                let inserted = transaction.execute(cdr_sql, &refs)? > 0;
                if inserted {
                    for m in &cdr.media {
                        let values = media_values(cdr, m);
                        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                            values.iter().map(|v| v as _).collect();
                        transaction.execute(media_sql, &refs)?;
                    }
                }
                transaction.execute(CLOSE_SQL, &[&cdr.call_id, &cdr.start_time_ms])?;
                transaction.commit()?;
                Ok(inserted)
            }
        }
    }

    /// Keeps (or updates) the durable record of a call that is up, as `instance`'s.
    pub fn keep_open(
        &mut self,
        instance: &str,
        call: &OpenCall,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_string(call).map_err(|e| StoreError {
            message: e.to_string(),
            transient: false,
        })?;
        const SQL: &str = "INSERT INTO cdr_open (call_id, start_time, instance, record) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (call_id, start_time) \
             DO UPDATE SET record = excluded.record";
        match self {
            Self::Sqlite(c) => {
                c.prepare_cached(SQL)?.execute(rusqlite::params![
                    call.call_id,
                    call.start_time_ms,
                    instance,
                    record
                ])?;
            }
            Self::Postgres(c) => {
                c.execute(
                    SQL,
                    &[&call.call_id, &call.start_time_ms, &instance, &record],
                )?;
            }
        }
        self.alive(instance, now_ms)
    }

    /// Records that `instance` is alive at `now_ms` (its heartbeat: one row per instance).
    pub fn alive(&mut self, instance: &str, now_ms: i64) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO cdr_instance (instance, alive_at) VALUES ($1, $2) \
             ON CONFLICT (instance) DO UPDATE SET alive_at = excluded.alive_at";
        match self {
            Self::Sqlite(c) => {
                c.prepare_cached(SQL)?
                    .execute(rusqlite::params![instance, now_ms])?;
            }
            Self::Postgres(c) => {
                c.execute(SQL, &[&instance, &now_ms])?;
            }
        }
        Ok(())
    }

    /// Open calls left by a process that stopped without ending them: `instance`'s own (this
    /// process is its successor; ask before its first heartbeat) and any whose instance's
    /// heartbeat is older than `stale_before_ms` (another instance that died, or whose
    /// clock is behind: see [`Store::heartbeats`]). Each with its instance and the last
    /// time that instance was known alive.
    pub fn orphans(
        &mut self,
        instance: &str,
        stale_before_ms: i64,
    ) -> Result<Vec<Orphan>, StoreError> {
        const SQL: &str = "SELECT o.record, o.instance, COALESCE(i.alive_at, 0) FROM cdr_open o \
             LEFT JOIN cdr_instance i ON i.instance = o.instance \
             WHERE o.instance = $1 OR COALESCE(i.alive_at, 0) < $2 ORDER BY o.start_time";
        let rows: Vec<(String, String, i64)> = match self {
            Self::Sqlite(c) => {
                let mut statement = c.prepare_cached(SQL)?;
                statement
                    .query_map(rusqlite::params![instance, stale_before_ms], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            }
            Self::Postgres(c) => c
                .query(SQL, &[&instance, &stale_before_ms])?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect(),
        };
        Ok(rows
            .into_iter()
            .filter_map(
                |(record, instance, alive_at_ms)| match serde_json::from_str(&record) {
                    Ok(call) => Some(Orphan {
                        call,
                        instance,
                        alive_at_ms,
                    }),
                    Err(error) => {
                        tracing::error!(%error, "unreadable open call record skipped");
                        None
                    }
                },
            )
            .collect())
    }

    /// Every instance's last heartbeat, as it wrote it. Read twice a few heartbeats apart it
    /// tells a live instance (it moved) from a dead one without comparing two hosts' clocks.
    pub fn heartbeats(&mut self) -> Result<HashMap<String, i64>, StoreError> {
        const SQL: &str = "SELECT instance, alive_at FROM cdr_instance";
        Ok(match self {
            Self::Sqlite(c) => c
                .prepare_cached(SQL)?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<HashMap<_, _>, _>>()?,
            Self::Postgres(c) => c
                .query(SQL, &[])?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect(),
        })
    }

    /// Rows of `table` (`cdr` or `cdr_media`) whose `start_time` is in `[from_ms, to_ms)`, in
    /// start order, each as (column, value) pairs without the internal `id`.
    pub fn rows(
        &mut self,
        table: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(Vec<String>, Vec<Vec<Value>>), StoreError> {
        let columns = match table {
            "cdr" => CDR_COLUMNS,
            "cdr_media" => CDR_MEDIA_COLUMNS,
            other => {
                return Err(StoreError {
                    message: format!("unknown table {other}"),
                    transient: false,
                });
            }
        };
        let sql = format!(
            "SELECT {} FROM {table} WHERE start_time >= $1 AND start_time < $2 ORDER BY start_time, id",
            columns.join(", ")
        );
        let names = columns.iter().map(|c| (*c).to_owned()).collect();
        let mut out = Vec::new();
        match self {
            Self::Sqlite(c) => {
                let mut statement = c.prepare(&sql)?;
                let mut rows = statement.query(rusqlite::params![from_ms, to_ms])?;
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns.len());
                    for i in 0..columns.len() {
                        use rusqlite::types::ValueRef;
                        values.push(match row.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(v) => Value::Int(v),
                            ValueRef::Real(v) => Value::Real(v),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                        });
                    }
                    out.push(values);
                }
            }
            Self::Postgres(c) => {
                use postgres::types::Type;
                for row in c.query(sql.as_str(), &[&from_ms, &to_ms])? {
                    let mut values = Vec::with_capacity(columns.len());
                    for (i, column) in row.columns().iter().enumerate() {
                        let t = column.type_();
                        let value = if *t == Type::INT8 {
                            row.get::<_, Option<i64>>(i).map(Value::Int)
                        } else if *t == Type::INT4 {
                            row.get::<_, Option<i32>>(i).map(|v| Value::Int(v.into()))
                        } else if *t == Type::FLOAT8 {
                            row.get::<_, Option<f64>>(i).map(Value::Real)
                        } else if *t == Type::BOOL {
                            row.get::<_, Option<bool>>(i).map(Value::Bool)
                        } else {
                            row.get::<_, Option<String>>(i).map(Value::Text)
                        };
                        values.push(value.unwrap_or(Value::Null));
                    }
                    out.push(values);
                }
            }
        }
        Ok((names, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_hide_passwords() {
        assert_eq!(
            Target::parse("sqlite://cdr.db").unwrap(),
            Target::Sqlite("cdr.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/x.db").unwrap(),
            Target::Sqlite("/var/lib/x.db".into())
        );
        assert!(Target::parse("sqlite://").is_err());
        assert!(Target::parse("mysql://x").is_err());
        let pg = Target::parse("postgres://cdr:secret@db.example:5432/calls").unwrap();
        assert_eq!(pg.display(), "postgres://cdr:***@db.example:5432/calls");
    }
}

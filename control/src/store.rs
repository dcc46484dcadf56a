//! Users in SQL.

use std::str::FromStr;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// A stored user.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: u64,
    pub user_name: String,
    /// The password's hash.
    pub password: String,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("user_name", &self.user_name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Users in SQLite (the embedded default) or PostgreSQL (production), chosen by the URL.
#[derive(Clone)]
pub enum UserStore {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl UserStore {
    /// Opens the database at `url` (`sqlite:…`, created if missing, or `postgres://…`) and runs
    /// its migrations.
    pub async fn open(url: &str) -> Result<Self, crate::Error> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect(url)
                .await?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            return Ok(Self::Postgres(pool));
        }
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        // An in-memory database exists once per connection: keep exactly one.
        let max = if url.contains(":memory:") || url.contains("mode=memory") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .min_connections(if max == 1 { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self::Sqlite(pool))
    }

    /// Inserts a user; `Ok(None)` when the name is taken.
    pub async fn create(&self, user_name: &str, password_hash: &str) -> Result<Option<u64>, sqlx::Error> {
        let result = match self {
            Self::Sqlite(pool) => sqlx::query(r#"INSERT INTO "user" (user_name, password) VALUES (?, ?)"#)
                .bind(user_name)
                .bind(password_hash)
                .execute(pool)
                .await
                .map(|r| r.last_insert_rowid() as u64),
            Self::Postgres(pool) => {
                sqlx::query(r#"INSERT INTO "user" (user_name, password) VALUES ($1, $2) RETURNING id"#)
                    .bind(user_name)
                    .bind(password_hash)
                    .fetch_one(pool)
                    .await
                    .map(|row| row.get::<i64, _>("id") as u64)
            }
        };
        match result {
            Ok(id) => Ok(Some(id)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn by_name(&self, user_name: &str) -> Result<Option<UserRow>, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(pool) => {
                sqlx::query(r#"SELECT id, user_name, password FROM "user" WHERE user_name = ?"#)
                    .bind(user_name)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| to_user(&r))
            }
            Self::Postgres(pool) => {
                sqlx::query(r#"SELECT id, user_name, password FROM "user" WHERE user_name = $1"#)
                    .bind(user_name)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| to_user(&r))
            }
        })
    }

    pub async fn by_id(&self, id: u64) -> Result<Option<UserRow>, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query(r#"SELECT id, user_name, password FROM "user" WHERE id = ?"#)
                .bind(id as i64)
                .fetch_optional(pool)
                .await?
                .map(|r| to_user(&r)),
            Self::Postgres(pool) => {
                sqlx::query(r#"SELECT id, user_name, password FROM "user" WHERE id = $1"#)
                    .bind(id as i64)
                    .fetch_optional(pool)
                    .await?
                    .map(|r| to_user(&r))
            }
        })
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

fn to_user<R: Row>(row: &R) -> UserRow
where
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    UserRow {
        id: row.get::<i64, _>("id") as u64,
        user_name: row.get("user_name"),
        password: row.get("password"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn create_find_and_unique_names(store: UserStore) {
        let id = store.create("alice'; DROP TABLE user; --", "h").await.unwrap().unwrap();
        assert_eq!(store.create("alice'; DROP TABLE user; --", "h2").await.unwrap(), None);
        let by_name = store.by_name("alice'; DROP TABLE user; --").await.unwrap().unwrap();
        assert_eq!(by_name.id, id);
        assert_eq!(store.by_id(id).await.unwrap().unwrap().user_name, by_name.user_name);
        assert_eq!(store.by_id(id + 1).await.unwrap(), None);
    }

    #[tokio::test]
    async fn sqlite() {
        create_find_and_unique_names(UserStore::open("sqlite::memory:").await.unwrap()).await;
    }

    /// Against the machine's PostgreSQL (`PG_URL`, default postgres@127.0.0.1:5432), in a
    /// database of its own that it drops afterwards.
    #[tokio::test]
    async fn postgres() {
        let admin_url =
            std::env::var("PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = PgPool::connect(&admin_url).await.expect("PostgreSQL reachable");
        let db = format!("gochat_test_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
        let url = format!("{}/{db}", admin_url.rsplit_once('/').unwrap().0);
        let store = UserStore::open(&url).await.unwrap();
        create_find_and_unique_names(store.clone()).await;
        store.close().await;
        // The server may not have ended the closed sessions yet: force.
        sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.unwrap();
    }
}

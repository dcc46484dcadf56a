//! Users in SQL.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: u64,
    pub user_name: String,
    pub password: String,
}

#[derive(Clone)]
pub struct UserStore {
    pool: SqlitePool,
}

impl UserStore {
    /// Opens (creating if needed) the database at `url` and runs the migrations.
    pub async fn open(url: &str) -> Result<Self, crate::Error> {
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
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Inserts a user; `Ok(None)` when the name is taken.
    pub async fn create(&self, user_name: &str, password_hash: &str) -> Result<Option<u64>, sqlx::Error> {
        let result = sqlx::query(r#"INSERT INTO "user" (user_name, password) VALUES (?, ?)"#)
            .bind(user_name)
            .bind(password_hash)
            .execute(&self.pool)
            .await;
        match result {
            Ok(r) => Ok(Some(r.last_insert_rowid() as u64)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn by_name(&self, user_name: &str) -> Result<Option<UserRow>, sqlx::Error> {
        let row = sqlx::query(r#"SELECT id, user_name, password FROM "user" WHERE user_name = ?"#)
            .bind(user_name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(to_user))
    }

    pub async fn by_id(&self, id: u64) -> Result<Option<UserRow>, sqlx::Error> {
        let row = sqlx::query(r#"SELECT id, user_name, password FROM "user" WHERE id = ?"#)
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(to_user))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn to_user(row: sqlx::sqlite::SqliteRow) -> UserRow {
    UserRow {
        id: row.get::<i64, _>("id") as u64,
        user_name: row.get("user_name"),
        password: row.get("password"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_find_and_unique_names() {
        let store = UserStore::open("sqlite::memory:").await.unwrap();
        let id = store.create("alice'; DROP TABLE user; --", "h").await.unwrap().unwrap();
        assert_eq!(store.create("alice'; DROP TABLE user; --", "h2").await.unwrap(), None);
        let by_name = store.by_name("alice'; DROP TABLE user; --").await.unwrap().unwrap();
        assert_eq!(by_name.id, id);
        assert_eq!(store.by_id(id).await.unwrap().unwrap().user_name, by_name.user_name);
        assert_eq!(store.by_id(id + 1).await.unwrap(), None);
    }
}

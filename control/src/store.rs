//! Users in SQL.
//!
//! Each user's name has two skeletons beside it ([`crate::names`]), each unique, so no two users
//! have names that look alike. Rows of earlier versions get theirs when the store opens.

use std::str::FromStr;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use crate::names::{self, Name};

/// The skeleton columns, as [`names::skeletons`] returns them.
const SKELETONS: [&str; 2] = ["name_skeleton", "name_skeleton_ci"];

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
            let store = Self::Postgres(pool);
            store.fill_in_skeletons().await?;
            return Ok(store);
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
        let store = Self::Sqlite(pool);
        store.fill_in_skeletons().await?;
        Ok(store)
    }

    /// Gives the users that have none (rows of versions before the skeletons, or written by one
    /// still running beside this one) their name's skeletons, oldest user first, in one
    /// transaction. Where an older user holds a skeleton already, the newer one is left without
    /// it (NULL: a unique index allows any number), logged with both names; both accounts keep
    /// working, and the older one keeps the look-alikes. Tried again at every start, so a
    /// skeleton freed by renaming or removing the older user is taken then.
    async fn fill_in_skeletons(&self) -> Result<(), sqlx::Error> {
        const MISSING: &str = r#"SELECT id, user_name, name_skeleton, name_skeleton_ci FROM "user"
            WHERE name_skeleton IS NULL OR name_skeleton_ci IS NULL ORDER BY id"#;
        type Missing = (i64, String, Option<String>, Option<String>);
        let rows: Vec<Missing> = match self {
            Self::Sqlite(pool) => sqlx::query_as(MISSING).fetch_all(pool).await?,
            Self::Postgres(pool) => sqlx::query_as(MISSING).fetch_all(pool).await?,
        };
        let mut updates = Vec::new();
        for (id, user_name, skeleton, skeleton_ci) in rows {
            // Of the name in NFKC, as registrations store it: `ａdmin` of an earlier version is
            // a look-alike of `admin`.
            let (new, new_ci) = names::skeletons(&names::nfkc(&user_name));
            for (column, had, value) in [(SKELETONS[0], skeleton, new), (SKELETONS[1], skeleton_ci, new_ci)] {
                if had.is_none() {
                    updates.push((id, user_name.clone(), column, value));
                }
            }
        }
        if updates.is_empty() {
            return Ok(());
        }
        // Set where no other user has the value; a row left unchanged is a look-alike.
        let update = |column: &str| {
            format!(
                r#"UPDATE "user" SET {column} = $1 WHERE id = $2
                    AND NOT EXISTS (SELECT 1 FROM "user" WHERE {column} = $1)"#
            )
        };
        macro_rules! fill {
            ($pool:expr, $sql:expr) => {
                async {
                    let mut tx = $pool.begin().await?;
                    let mut set = Vec::with_capacity(updates.len());
                    for (id, _, column, value) in &updates {
                        let sql = $sql(update(column));
                        let done = sqlx::query(&sql).bind(value).bind(id).execute(&mut *tx).await?;
                        set.push(done.rows_affected() == 1);
                    }
                    tx.commit().await.map(|()| set)
                }
                .await
            };
        }
        let set = match self {
            Self::Sqlite(pool) => fill!(pool, |sql: String| sql.replace('$', "?")),
            Self::Postgres(pool) => fill!(pool, |sql: String| sql),
        };
        let set = match set {
            Ok(set) => set,
            // A user registered meanwhile through another control took one of the values.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tracing::warn!(error = %e, "user name skeletons not filled in; tried again at the next start");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let left = set.iter().filter(|s| !**s).count();
        tracing::info!(filled = updates.len() - left, left, "user name skeletons filled in");
        for ((id, user_name, column, value), _) in updates.iter().zip(set).filter(|(_, s)| !s) {
            let holder = self.holder_of(column, value).await?;
            tracing::warn!(
                user_id = id,
                user_name,
                look_alike_of = holder.as_ref().map(|h| h.1.as_str()),
                look_alike_id = holder.as_ref().map(|h| h.0),
                column,
                "user name looks like an older user's: the older keeps its look-alikes, both can log in"
            );
        }
        Ok(())
    }

    /// The user (id, name) holding `value` in the skeleton `column`.
    async fn holder_of(&self, column: &str, value: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
        match self {
            Self::Sqlite(pool) => {
                sqlx::query_as(&format!(r#"SELECT id, user_name FROM "user" WHERE {column} = ?"#))
                    .bind(value)
                    .fetch_optional(pool)
                    .await
            }
            Self::Postgres(pool) => {
                sqlx::query_as(&format!(r#"SELECT id, user_name FROM "user" WHERE {column} = $1"#))
                    .bind(value)
                    .fetch_optional(pool)
                    .await
            }
        }
    }

    /// Inserts a user; `Ok(None)` when the name or one of its skeletons is taken.
    pub(crate) async fn create(&self, name: &Name, password_hash: &str) -> Result<Option<u64>, sqlx::Error> {
        let result = match self {
            Self::Sqlite(pool) => sqlx::query(
                r#"INSERT INTO "user" (user_name, name_skeleton, name_skeleton_ci, password) VALUES (?, ?, ?, ?)"#,
            )
            .bind(&name.name)
            .bind(&name.skeleton)
            .bind(&name.skeleton_ci)
            .bind(password_hash)
            .execute(pool)
            .await
            .map(|r| r.last_insert_rowid() as u64),
            Self::Postgres(pool) => sqlx::query(
                r#"INSERT INTO "user" (user_name, name_skeleton, name_skeleton_ci, password)
                    VALUES ($1, $2, $3, $4) RETURNING id"#,
            )
            .bind(&name.name)
            .bind(&name.skeleton)
            .bind(&name.skeleton_ci)
            .bind(password_hash)
            .fetch_one(pool)
            .await
            .map(|row| row.get::<i64, _>("id") as u64),
        };
        match result {
            Ok(id) => Ok(Some(id)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stored name that `name` is, or looks like (the same, first, when both exist).
    pub(crate) async fn taken_by(&self, name: &Name) -> Result<Option<String>, sqlx::Error> {
        const HOLDER: &str = r#"SELECT user_name FROM "user" WHERE user_name = $1 OR name_skeleton = $2
            OR name_skeleton_ci = $3 ORDER BY user_name = $1 DESC LIMIT 1"#;
        let row: Option<(String,)> = match self {
            Self::Sqlite(pool) => {
                sqlx::query_as(&HOLDER.replace('$', "?"))
                    .bind(&name.name)
                    .bind(&name.skeleton)
                    .bind(&name.skeleton_ci)
                    .fetch_optional(pool)
                    .await?
            }
            Self::Postgres(pool) => {
                sqlx::query_as(HOLDER)
                    .bind(&name.name)
                    .bind(&name.skeleton)
                    .bind(&name.skeleton_ci)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(row.map(|r| r.0))
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

    pub(crate) async fn by_id(&self, id: u64) -> Result<Option<UserRow>, sqlx::Error> {
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

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
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

    fn name(s: &str) -> Name {
        names::normalize(s).unwrap()
    }

    async fn create_find_and_unique_names(store: UserStore) {
        let alice = name("alice'; DROP TABLE user; --");
        let id = store.create(&alice, "h").await.unwrap().unwrap();
        assert_eq!(store.create(&alice, "h2").await.unwrap(), None);
        let by_name = store.by_name("alice'; DROP TABLE user; --").await.unwrap().unwrap();
        assert_eq!(by_name.id, id);
        assert_eq!(store.by_id(id).await.unwrap().unwrap().user_name, by_name.user_name);
        assert_eq!(store.by_id(id + 1).await.unwrap(), None);
        // Look-alikes are taken too, and say by whom.
        for look_alike in ["ALICE'; DROP TABLE user; --", "\u{430}lice'; DROP TABLE user; --"] {
            assert_eq!(store.create(&name(look_alike), "h").await.unwrap(), None, "{look_alike}");
            assert_eq!(
                store.taken_by(&name(look_alike)).await.unwrap().as_deref(),
                Some(alice.name.as_str())
            );
        }
        assert_eq!(store.taken_by(&alice).await.unwrap(), Some(alice.name.clone()));
        assert_eq!(store.taken_by(&name("bob")).await.unwrap(), None);
    }

    /// A database of the version before skeletons, whose users include look-alikes (and a
    /// name stored before NFKC): every user keeps their account, the oldest of look-alikes
    /// holds their skeletons, and opening it again changes nothing.
    async fn skeletons_are_filled_in_for_earlier_users(url: &str, dir: &str) {
        let earlier = std::env::temp_dir().join(format!("gochat-migrations-{}-{dir}", std::process::id()));
        std::fs::create_dir_all(&earlier).unwrap();
        let first = format!("{}/migrations/{dir}/0001_user.sql", env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(first, earlier.join("0001_user.sql")).unwrap();
        let migrator = sqlx::migrate::Migrator::new(earlier.as_path()).await.unwrap();
        let legacy =
            ["admin", "Admin", "dem\u{43e}", "demo", "\u{ff41}dmin", "eve", "\u{412}\u{41e}\u{412}", "BOB"];
        let insert = r#"INSERT INTO "user" (user_name, password) VALUES ($1, 'h')"#;
        if url.starts_with("sqlite") {
            let options = SqliteConnectOptions::from_str(url).unwrap().create_if_missing(true);
            let pool = SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for n in legacy {
                sqlx::query(&insert.replace('$', "?")).bind(n).execute(&pool).await.unwrap();
            }
            pool.close().await;
        } else {
            let pool = PgPool::connect(url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for n in legacy {
                sqlx::query(insert).bind(n).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        let _ = std::fs::remove_dir_all(&earlier);

        for round in 0..2 {
            let store = UserStore::open(url).await.unwrap();
            for (id, n) in legacy.iter().enumerate() {
                let user = store.by_name(n).await.unwrap().unwrap_or_else(|| panic!("{n}"));
                assert_eq!(user.id, id as u64 + 1, "{n}");
            }
            let skeletons: Vec<(String, Option<String>, Option<String>)> = match &store {
                UserStore::Sqlite(pool) => sqlx::query_as(
                    r#"SELECT user_name, name_skeleton, name_skeleton_ci FROM "user" ORDER BY id"#,
                )
                .fetch_all(pool)
                .await
                .unwrap(),
                UserStore::Postgres(pool) => sqlx::query_as(
                    r#"SELECT user_name, name_skeleton, name_skeleton_ci FROM "user" ORDER BY id"#,
                )
                .fetch_all(pool)
                .await
                .unwrap(),
            };
            let held: Vec<(bool, bool)> =
                skeletons[..legacy.len()].iter().map(|(_, s, ci)| (s.is_some(), ci.is_some())).collect();
            assert_eq!(
                held,
                [
                    (true, true),   // admin
                    (true, false),  // Admin: its lowercase is admin's
                    (true, true),   // demо, older than demo
                    (false, false), // demo looks like it, in both cases
                    (false, false), // ａdmin is admin
                    (true, true),   // eve
                    (true, true),   // Cyrillic ВОВ
                    (false, true),  // BOB looks like ВОВ; in lowercase, bob is not вов
                ],
                "{skeletons:?}"
            );
            // The holders keep their look-alikes.
            assert_eq!(store.create(&name("ADMIN"), "h").await.unwrap(), None);
            assert_eq!(store.taken_by(&name("demo")).await.unwrap().as_deref(), Some("demo"));
            assert_eq!(store.taken_by(&name("DEMO")).await.unwrap().as_deref(), Some("dem\u{43e}"));
            assert!(store.create(&name(&format!("carol{round}")), "h").await.unwrap().is_some());
            store.close().await;
        }
    }

    #[tokio::test]
    async fn sqlite() {
        create_find_and_unique_names(UserStore::open("sqlite::memory:").await.unwrap()).await;
    }

    #[tokio::test]
    async fn sqlite_of_an_earlier_version() {
        let file = std::env::temp_dir().join(format!("gochat-earlier-{}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&file);
        skeletons_are_filled_in_for_earlier_users(&format!("sqlite://{}", file.display()), "sqlite").await;
        let _ = std::fs::remove_file(&file);
    }

    /// Against the machine's PostgreSQL (`POSTGRES_ADMIN_URL`, default postgres@127.0.0.1:5432),
    /// in a database of its own that it drops afterwards; without one, outside CI, skipped.
    async fn with_postgres(what: &str, test: impl AsyncFnOnce(&str)) {
        use gochat_test_services::{postgres_admin_url, present, Service};
        if !present(&[Service::Postgres]) {
            return;
        }
        let admin_url = postgres_admin_url();
        let admin = PgPool::connect(&admin_url).await.expect("PostgreSQL reachable");
        let db = format!("gochat_test_{what}_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.unwrap();
        let url = format!("{}/{db}", admin_url.rsplit_once('/').unwrap().0);
        test(&url).await;
        // The server may not have ended the closed sessions yet: force.
        sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.unwrap();
    }

    #[tokio::test]
    async fn postgres() {
        with_postgres("store", async |url| {
            let store = UserStore::open(url).await.unwrap();
            create_find_and_unique_names(store.clone()).await;
            store.close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn postgres_of_an_earlier_version() {
        with_postgres("earlier", async |url| {
            skeletons_are_filled_in_for_earlier_users(url, "postgres").await
        })
        .await;
    }
}

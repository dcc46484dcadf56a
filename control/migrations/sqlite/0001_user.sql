-- gochat's user table; the password column holds a PHC-format argon2id hash.
CREATE TABLE IF NOT EXISTS "user" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    create_time TEXT NOT NULL DEFAULT (datetime('now'))
);

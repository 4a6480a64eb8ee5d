//! Re-embeds the SQL migrations (`sqlx::migrate!`) when a file in `migrations/` changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

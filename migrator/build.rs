//! `embed_migrations!` reads `migrations/` at compile time, which cargo does not track by
//! itself: without this, adding a migration file would not rebuild the migrator.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

//! Where grants are kept: backends of [`crate::access::GrantStore`].
//! [`sqlite`] is the one in use; a PostgreSQL backend would sit beside it.

pub mod sqlite;

pub use sqlite::SqliteStore;

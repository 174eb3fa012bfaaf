//! The operations of audit queries (extensions §8): `audit_query`, `audit_verify`, without a transport.

//! The operations of mesh info (extensions §18): `mesh_info`, without a transport.

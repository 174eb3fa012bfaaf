//! The operations of memory (extensions §2): `remember`, `recall`, `forget`, without a transport.

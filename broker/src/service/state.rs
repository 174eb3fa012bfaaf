//! The operations of shared state (extensions §1): `set_state`, `get_state`, `list_state`, without a transport.

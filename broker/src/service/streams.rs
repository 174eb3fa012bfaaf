//! The operations of streams (extensions §4): `create_stream`, `subscribe`, `unsubscribe`, `publish`, `list_streams`, without a transport.

//! The operations of URL watches (extensions §17): `watch`, `unwatch`, `watch_list`, without a transport.

//! The operations of API keys (extensions §10): `apikey_create`, `apikey_list`, `apikey_revoke`, without a transport.

//! The operations of the peer-hosted MCP registry (extensions §14), without a transport.

//! The operations of the peer file and directory relay (extensions §13), without a transport.

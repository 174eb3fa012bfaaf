//! The operations of delivery status (extensions §7): `message_status`, without a transport.

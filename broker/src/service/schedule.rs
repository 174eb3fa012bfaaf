//! The operations of scheduled messages and reminders (extensions §5): `schedule`, `list_scheduled`, `cancel_scheduled`, without a transport.

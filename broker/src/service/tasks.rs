//! The operations of tasks (extensions §3): `create_task`, `claim_task`, `complete_task`, `list_tasks`, without a transport.

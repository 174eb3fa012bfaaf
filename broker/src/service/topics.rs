//! The operations of topics (extensions §9): `topic_create`, `topic_list`, `topic_join`, `topic_leave`, `topic_members`, `topic_history`, `topic_mark_read`, and `#topic` posts, without a transport.

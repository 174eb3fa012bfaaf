//! The operations of webhooks (extensions §15): `create_webhook`, `list_webhooks`, `delete_webhook` and the inbound HTTP route, without a transport.

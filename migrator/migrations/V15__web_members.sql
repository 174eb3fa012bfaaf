-- Web-managed members (rest.md §4.10, issue 13): a member row the web chat manages for a
-- signed-in user, whose key the browser holds (IndexedDB) and may replace with
-- `POST /api/v1/me/peer-pubkey`. `web_user_id` set: web-managed, for that user (the
-- reference's `dashboard_user_id`). At most one per (mesh, user). CLI members keep NULL:
-- their on-disk key never changes.
ALTER TABLE members ADD COLUMN web_user_id text;
CREATE UNIQUE INDEX members_web_user ON members (mesh_id, web_user_id) WHERE web_user_id IS NOT NULL;

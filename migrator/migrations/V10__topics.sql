-- Topics (extensions §9, rest.md §4): named conversation scopes of a mesh with stored
-- history, per-member read marks, sealed topic keys and mention notifications.

-- `name` is unique among a mesh's non-archived topics. `encrypted_key_pubkey` is the hex
-- x25519 public key that sealed the topic key (the creator-seal key, or the claimer's);
-- null = an unencrypted (v1-only) topic.
CREATE TABLE topic (
    id                    text PRIMARY KEY,
    mesh_id               text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    name                  text NOT NULL,
    description           text,
    visibility            text NOT NULL CHECK (visibility IN ('public', 'private', 'dm')),
    created_by_member_id  text,
    encrypted_key_pubkey  text,
    created_at            bigint NOT NULL,
    archived_at           bigint
);

CREATE UNIQUE INDEX topic_live_name ON topic (mesh_id, name) WHERE archived_at IS NULL;

CREATE TABLE topic_member (
    topic_id      text NOT NULL REFERENCES topic (id) ON DELETE CASCADE,
    member_id     text NOT NULL,
    role          text NOT NULL CHECK (role IN ('lead', 'member', 'observer')),
    joined_at     bigint NOT NULL,
    last_read_at  bigint,
    PRIMARY KEY (topic_id, member_id)
);

CREATE INDEX topic_member_by_member ON topic_member (member_id);

-- One sealed copy of the topic key per (topic, member): base64 of sender x25519 public key
-- ‖ crypto_box_easy(key), and its nonce.
CREATE TABLE topic_member_key (
    topic_id       text NOT NULL REFERENCES topic (id) ON DELETE CASCADE,
    member_id      text NOT NULL,
    encrypted_key  text NOT NULL,
    nonce          text NOT NULL,
    sealed_at      bigint NOT NULL,
    PRIMARY KEY (topic_id, member_id)
);

-- History. `seq` orders messages of one millisecond; pages are (created_at, seq) cursors.
CREATE TABLE topic_message (
    seq                    bigserial NOT NULL UNIQUE,
    id                     text PRIMARY KEY,
    topic_id               text NOT NULL REFERENCES topic (id) ON DELETE CASCADE,
    mesh_id                text NOT NULL,
    sender_member_id       text NOT NULL,
    sender_member_pubkey   text NOT NULL,
    sender_session_pubkey  text,
    sender_name            text NOT NULL,
    nonce                  text NOT NULL,
    ciphertext             text NOT NULL,
    body_version           smallint NOT NULL CHECK (body_version IN (1, 2)),
    reply_to_id            text,
    queue_id               text NOT NULL,
    created_at             bigint NOT NULL
);

CREATE INDEX topic_message_page ON topic_message (topic_id, created_at DESC, seq DESC);

-- Mention notifications: one row per (message, recipient).
CREATE TABLE notification (
    id                   text PRIMARY KEY,
    mesh_id              text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    topic_id             text NOT NULL REFERENCES topic (id) ON DELETE CASCADE,
    message_id           text NOT NULL REFERENCES topic_message (id) ON DELETE CASCADE,
    recipient_member_id  text NOT NULL,
    sender_member_id     text NOT NULL,
    kind                 text NOT NULL,
    read_at              bigint,
    created_at           bigint NOT NULL,
    UNIQUE (message_id, recipient_member_id)
);

CREATE INDEX notification_inbox ON notification (mesh_id, recipient_member_id, created_at DESC);

-- Ours (extensions §9): every new member, whatever path enrols it (invite, operator API,
-- accounts), joins its mesh's non-archived `general` topic. The memory store does the same
-- in `MemoryStore::add_member` and invite redemption.
CREATE FUNCTION topic_general_on_member() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO topic_member (topic_id, member_id, role, joined_at)
    SELECT t.id, NEW.id, 'member', NEW.created_at FROM topic t
    WHERE t.mesh_id = NEW.mesh_id AND t.name = 'general' AND t.archived_at IS NULL
    ON CONFLICT DO NOTHING;
    RETURN NEW;
END;
$$;

CREATE TRIGGER topic_general_on_member AFTER INSERT ON members
    FOR EACH ROW EXECUTE FUNCTION topic_general_on_member();

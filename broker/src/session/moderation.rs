//! `disconnect`, `kick`, `ban`, `unban`, `list_bans` (spec §4.6): the WebSocket adapter of
//! `service::moderation`, which decides and acts; this answers with the frames.

use super::Session;
use crate::ids;
use crate::protocol::frames::{Ban, BanAck, ListBansResult, ModerationAck, UnbanAck, tag};
use crate::protocol::{self, Selection};
use crate::service::ModerationError;
use crate::service::moderation as svc;

impl Session {
    fn reply_frame<T: serde::Serialize>(&self, frame: &T) {
        self.reply(protocol::encode(frame));
    }

    fn refuse_moderation(&self, e: &ModerationError, req_id: Option<&str>) {
        self.reply_error(e.code(), &e.message(), req_id);
    }

    pub(super) async fn disconnect_or_kick(
        &mut self,
        kick: bool,
        sel: &Selection,
        req_id: Option<&str>,
    ) {
        let replied = |a: &svc::Affected| {
            self.reply_frame(&ModerationAck::new(
                a.names.clone(),
                a.skipped_control_plane.clone(),
                req_id,
            ));
        };
        let p = &self.attached.principal;
        if let Err(e) = svc::disconnect_or_kick(&self.svc, p, kick, sel, replied).await {
            self.refuse_moderation(&e, req_id);
        }
    }

    pub(super) async fn ban(&mut self, target: &str, reason: Option<&str>, req_id: Option<&str>) {
        let replied = |victim: &crate::store::Member| {
            self.reply_frame(&BanAck {
                kind: tag::BanAck,
                banned: victim.display_name.clone(),
                req_id: req_id.map(str::to_string),
            });
        };
        let p = &self.attached.principal;
        if let Err(e) = svc::ban(&self.svc, p, target, reason, replied).await {
            self.refuse_moderation(&e, req_id);
        }
    }

    pub(super) async fn unban(&mut self, target: &str, req_id: Option<&str>) {
        match svc::unban(&self.svc, &self.attached.principal, target).await {
            Ok(member) => self.reply_frame(&UnbanAck {
                kind: tag::UnbanAck,
                unbanned: member.display_name,
                req_id: req_id.map(str::to_string),
            }),
            Err(e) => self.refuse_moderation(&e, req_id),
        }
    }

    pub(super) async fn list_bans(&mut self, req_id: Option<&str>) {
        let banned = match svc::list_bans(&self.svc, &self.attached.principal).await {
            Ok(b) => b,
            Err(e) => return self.refuse_moderation(&e, req_id),
        };
        let bans = banned
            .into_iter()
            .filter_map(|m| {
                Some(Ban {
                    revoked_at: ids::iso8601_ms(m.revoked_at?),
                    name: m.display_name,
                    pubkey: m.pubkey,
                })
            })
            .collect();
        self.reply_frame(&ListBansResult {
            kind: tag::ListBansResult,
            bans,
            req_id: req_id.map(str::to_string),
        });
    }
}

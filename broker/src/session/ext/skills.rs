//! The WebSocket adapter of skills (extensions §12): `share_skill`, `get_skill`,
//! `list_skills`, `remove_skill`.
//!
//! `share_skill` gets `skill_ack{action:"shared"}` or an `error` (`forbidden` for a
//! replace by neither the author nor an admin); `get_skill` gets `skill_data` (`skill:null`
//! when there is none); `list_skills` gets `skill_list`; `remove_skill` always gets
//! `skill_ack` (`removed` or `not_found`), unless a backend failed.

use crate::protocol;
use crate::protocol::ext::skills::{SkillAck, SkillData, SkillFrame, SkillList};
use crate::service::skills::{self, SkillError};
use crate::session::Session;

fn ack(name: String, action: &str, req_id: Option<&str>) -> bytes::Bytes {
    protocol::encode(&SkillAck {
        name,
        action: action.into(),
        req_id: req_id.map(str::to_string),
    })
}

/// Handles one frame whose `type` is in [`crate::protocol::ext::skills::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame = match SkillFrame::decode(kind, text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let refuse = |s: &Session, e: SkillError| s.reply_error(e.code(), &e.message(), req_id);
    match frame {
        SkillFrame::ShareSkill(req) => {
            let name = req.name.clone();
            match skills::share(svc, p, req).await {
                Ok(()) => s.reply(ack(name, "shared", req_id)),
                Err(e) => refuse(s, e),
            }
        }
        SkillFrame::GetSkill { name } => match skills::get(svc, p, &name).await {
            Ok(skill) => {
                let frame = protocol::encode(&SkillData {
                    skill: skill.as_ref().map(skills::row),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "skill_data", req_id);
            }
            Err(e) => refuse(s, e),
        },
        SkillFrame::ListSkills { query } => match skills::list(svc, p, query.as_deref()).await {
            Ok(all) => {
                let frame = protocol::encode(&SkillList {
                    skills: all.iter().map(skills::summary_row).collect(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "skill_list", req_id);
            }
            Err(e) => refuse(s, e),
        },
        SkillFrame::RemoveSkill { name } => match skills::remove(svc, p, &name).await {
            Ok(removed) => {
                let action = if removed { "removed" } else { "not_found" };
                s.reply(ack(name, action, req_id));
            }
            Err(e) => refuse(s, e),
        },
    }
}

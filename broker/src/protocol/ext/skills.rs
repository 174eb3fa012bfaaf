//! Frames of skills (extensions §12): `share_skill`, `get_skill`, `list_skills`,
//! `remove_skill`.
//!
//! `manifest` is opaque JSON kept byte for byte: it is decoded as a raw JSON slice
//! ([`RawValue`]), which serde cannot do inside an internally tagged enum, so
//! [`SkillFrame::decode`] reads `share_skill` as its own struct. The daemon matches
//! `skill_list.skills` and `skill_data.skill` with a strict `_reqId` (§0.2): both are the
//! reference's names.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["share_skill", "get_skill", "list_skills", "remove_skill"];

/// `share_skill{name, description, instructions, tags?, manifest?}`. Fields the CLI may
/// omit default, so that such a frame is refused by the service with a clear error instead
/// of `malformed`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShareSkill {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub instructions: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// The raw JSON as sent (`None`: absent or `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Box<RawValue>>,
}

/// A client frame of this family.
#[derive(Debug, Clone)]
pub enum SkillFrame {
    ShareSkill(ShareSkill),
    GetSkill { name: String },
    ListSkills { query: Option<String> },
    RemoveSkill { name: String },
}

/// The frames of this family but `share_skill`, through serde's tag.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Tagged {
    GetSkill {
        #[serde(default)]
        name: String,
    },
    ListSkills {
        #[serde(default)]
        query: Option<String>,
    },
    RemoveSkill {
        #[serde(default)]
        name: String,
    },
}

impl SkillFrame {
    /// Decodes a frame whose `type` is `kind` (one of [`TYPES`]).
    pub fn decode(kind: &str, text: &[u8]) -> Result<SkillFrame, serde_json::Error> {
        if kind == "share_skill" {
            return serde_json::from_slice(text).map(SkillFrame::ShareSkill);
        }
        Ok(match serde_json::from_slice(text)? {
            Tagged::GetSkill { name } => SkillFrame::GetSkill { name },
            Tagged::ListSkills { query } => SkillFrame::ListSkills { query },
            Tagged::RemoveSkill { name } => SkillFrame::RemoveSkill { name },
        })
    }
}

/// `skill_ack{name, action, _reqId}`: `action` is `"shared"` (for `share_skill`),
/// `"removed"` or `"not_found"` (for `remove_skill`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "skill_ack")]
pub struct SkillAck {
    pub name: String,
    pub action: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One skill as `get_skill` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkillRow {
    pub name: String,
    pub description: String,
    pub instructions: String,
    pub tags: Vec<String>,
    /// The display name of the member that shared it (`"unknown"` when it had none).
    pub author: String,
    /// The manifest byte for byte as shared, or `null`.
    pub manifest: Option<Box<RawValue>>,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
}

/// `skill_data{skill, _reqId}`: `skill` is `null` when there is none of that name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename = "skill_data")]
pub struct SkillData {
    pub skill: Option<SkillRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One skill as `list_skills` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkillSummary {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub author: String,
    pub created_at: String,
}

/// `skill_list{skills, _reqId}`, ordered by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "skill_list")]
pub struct SkillList {
    pub skills: Vec<SkillSummary>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_skill_keeps_the_manifest_byte_for_byte() {
        let text = br#"{"type":"share_skill","name":"n","manifest":{"z": 1, "a":[1.50, 1e400]},"_reqId":"r"}"#;
        let SkillFrame::ShareSkill(share) = SkillFrame::decode("share_skill", text).unwrap() else {
            panic!("not share_skill");
        };
        assert_eq!(share.name, "n");
        assert_eq!(share.description, "");
        assert_eq!(
            share.manifest.unwrap().get(),
            r#"{"z": 1, "a":[1.50, 1e400]}"#
        );
        let null = br#"{"type":"share_skill","name":"n","manifest":null}"#;
        let SkillFrame::ShareSkill(share) = SkillFrame::decode("share_skill", null).unwrap() else {
            panic!("not share_skill");
        };
        assert!(share.manifest.is_none());
        let SkillFrame::ListSkills { query } =
            SkillFrame::decode("list_skills", br#"{"type":"list_skills"}"#).unwrap()
        else {
            panic!("not list_skills");
        };
        assert_eq!(query, None);
        assert!(SkillFrame::decode("get_skill", br#"{"type":"get_skill","name":5}"#).is_err());
        let data = SkillData {
            skill: Some(SkillRow {
                name: "n".into(),
                description: "d".into(),
                instructions: "i".into(),
                tags: vec![],
                author: "alice".into(),
                manifest: Some(RawValue::from_string(r#"{"b":2,"a":1}"#.into()).unwrap()),
                created_at: "t".into(),
            }),
            req_id: Some("r".into()),
        };
        assert_eq!(
            String::from_utf8(serde_json::to_vec(&data).unwrap()).unwrap(),
            r#"{"type":"skill_data","skill":{"name":"n","description":"d","instructions":"i","tags":[],"author":"alice","manifest":{"b":2,"a":1},"createdAt":"t"},"_reqId":"r"}"#
        );
        let miss = serde_json::to_value(SkillData {
            skill: None,
            req_id: None,
        })
        .unwrap();
        assert_eq!(
            miss,
            serde_json::json!({"type": "skill_data", "skill": null})
        );
    }
}

//! Classification of a `send`'s `targetSpec`.

/// Who a `send` is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// 64 lowercase hex: a member key or a session key.
    Direct(&'a str),
    /// `*` or `@all`: every other visible presence of the mesh.
    Broadcast,
    /// `@name`: the presences in group `name`.
    Group(&'a str),
    /// `#<topicId>`: a post to a topic (extensions §9).
    Topic(&'a str),
}

/// Why a `targetSpec` cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid targetSpec: expected a 64-hex key, \"*\", \"@all\" or \"@group\"")]
pub struct InvalidTarget;

pub fn classify(spec: &str) -> Result<Target<'_>, InvalidTarget> {
    match spec {
        "*" | "@all" => Ok(Target::Broadcast),
        _ if super::signing::is_key_hex(spec) => Ok(Target::Direct(spec)),
        _ => match spec.strip_prefix('@') {
            Some(name) if !name.is_empty() => Ok(Target::Group(name)),
            _ => match spec.strip_prefix('#') {
                Some(topic) if !topic.is_empty() => Ok(Target::Topic(topic)),
                _ => Err(InvalidTarget),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_form() {
        let key = "c89b1cbe1bd981ff9c19a0c94b3c281aac166df2155518c6941435664f08a7ce";
        assert_eq!(classify(key), Ok(Target::Direct(key)));
        assert_eq!(classify("*"), Ok(Target::Broadcast));
        assert_eq!(classify("@all"), Ok(Target::Broadcast));
        assert_eq!(classify("@ops"), Ok(Target::Group("ops")));
        assert_eq!(classify("@"), Err(InvalidTarget));
        assert_eq!(classify("#abc"), Ok(Target::Topic("abc")));
        assert_eq!(classify("#"), Err(InvalidTarget));
        assert_eq!(classify(""), Err(InvalidTarget));
        assert_eq!(classify(&key.to_uppercase()), Err(InvalidTarget));
        assert_eq!(classify(&key[..63]), Err(InvalidTarget));
    }
}

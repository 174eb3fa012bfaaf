//! Tidy checks over the source tree and the docs: plain file scanning, no broker started.
//!
//! `process_state_has_a_row_in_statelessness_md` keeps `docs/statelessness.md` true. It
//! scans `broker/src/**/*.rs` (outside `#[cfg(test)]` modules) for
//!
//! - every struct field whose type holds a `Mutex`, `RwLock`, `OnceLock`, `OnceCell`,
//!   `LazyLock` or an atomic (`AtomicBool`, `AtomicU64`, …): it must be named `Type.field`;
//! - every `static` item, and every `type` alias of such a lock or cell: named by its name;
//! - every spawned task (`tokio::spawn`, `tracker.spawn`, `workers.spawn`,
//!   `spawn_untracked`, `spawn_blocking`, `thread::spawn`): named by its worker name when
//!   the first argument is a string literal (`workers.spawn("sweep", …)`), else by the
//!   function it is spawned from (`Type::function` inside an `impl`, else `function`);
//!
//! and requires, for each, a table row of `docs/statelessness.md` that names both the
//! file (as `` `path/from/src.rs` ``) and the item inside backticks. The rows it accepts
//! are the inventory tables (sections A to E: state, where, holds, truth lives in, rebuilt
//! by, lost if the replica dies, backed by test), so each row says whose truth it is and
//! what a replica's death loses.
//!
//! `relative_links_in_the_docs_resolve` checks that every relative Markdown link of
//! `README.md`, `ARCHITECTURE.md` and `docs/*.md` points at a file that exists and, when it
//! has one, at a heading anchor that exists.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the broker crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments removed and the contents of string and char literals blanked
/// (so braces inside them do not count), line structure kept.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // Raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            out.push_str("\"\"");
            j += 1;
            'raw: while j < b.len() {
                if b[j] == '"' {
                    let mut k = 0;
                    while k < hashes && b.get(j + 1 + k) == Some(&'#') {
                        k += 1;
                    }
                    if k == hashes {
                        j += 1 + hashes;
                        break 'raw;
                    }
                }
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F}'), or a lifetime ('a, 'static).
            if next == Some('\\') {
                // Skip the escaped character itself (it may be a quote).
                let mut j = i + 3;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                out.push_str("' '");
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                out.push_str("' '");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Scope {
    Struct(String),
    Impl(String),
    Fn(String),
    Skip,
    Other,
}

fn word_after<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let mut rest = text;
    while let Some(pos) = rest.find(keyword) {
        let before_ok = pos == 0
            || !rest[..pos]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[pos + keyword.len()..];
        if before_ok && after.starts_with(char::is_whitespace) {
            let name = after.trim_start();
            let end = name
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            if end > 0 {
                return Some(&name[..end]);
            }
        }
        rest = after;
    }
    None
}

/// Where `keyword` starts as a word of its own.
fn keyword_at(text: &str, keyword: &str) -> Option<usize> {
    text.match_indices(keyword).map(|(i, _)| i).find(|&i| {
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(text[..i].chars().last()) && !ident(text[i + keyword.len()..].chars().next())
    })
}

/// An item keyword at the start of a line, after an optional visibility.
fn item_name<'a>(line: &'a str, keyword: &str) -> Option<&'a str> {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = r.trim_start();
        if rest.starts_with('(') {
            rest = rest[rest.find(')')? + 1..].trim_start();
        }
    }
    let rest = rest.strip_prefix(keyword)?.strip_prefix(' ')?.trim_start();
    let rest = rest.strip_prefix("mut ").unwrap_or(rest);
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// What a `{` opens, judged from the text since the previous `;`, `{` or `}`.
fn classify(header: &str, skip_next_mod: bool) -> Scope {
    let h = header.trim();
    if skip_next_mod && word_after(h, "mod").is_some() {
        return Scope::Skip;
    }
    if let Some(name) = word_after(h, "struct") {
        return Scope::Struct(name.to_string());
    }
    if let Some(name) = word_after(h, "fn") {
        return Scope::Fn(name.to_string());
    }
    if let Some(at) = keyword_at(h, "impl") {
        // `impl<T> Type<T>`, `impl Trait for Type<T>`: the implementing type.
        let mut rest = h[at + 4..].trim_start();
        if let Some(p) = rest.find(" for ") {
            rest = &rest[p + 5..];
        } else if rest.starts_with('<') {
            let mut depth = 0;
            for (i, c) in rest.char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => {
                        depth -= 1;
                        if depth == 0 {
                            rest = &rest[i + 1..];
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        let target = rest.trim();
        let end = target
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(target.len());
        let path = &target[..end];
        let name = path.rsplit("::").next().unwrap_or(path);
        return Scope::Impl(name.to_string());
    }
    Scope::Other
}

const STATE_TYPES: [&str; 7] = [
    "Mutex<",
    "RwLock<",
    "OnceLock<",
    "OnceCell<",
    "LazyLock<",
    "Lazy<",
    "Atomic",
];

fn holds_state(ty: &str) -> bool {
    STATE_TYPES.iter().any(|t| {
        ty.match_indices(t).any(|(i, _)| {
            i == 0
                || !ty[..i]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    && (*t != "Atomic" || ty[i + 6..].starts_with(|c: char| c.is_ascii_uppercase()))
        })
    })
}

#[derive(Debug)]
struct Item {
    file: String,
    line: usize,
    what: &'static str,
    key: String,
}

const SPAWNS: [&str; 6] = [
    "tokio::spawn(",
    "task::spawn(",
    "spawn_blocking(",
    "thread::spawn(",
    ".spawn(",
    ".spawn_untracked(",
];

fn scan(rel: &str, src: &str) -> Vec<Item> {
    let original: Vec<&str> = src.lines().collect();
    let stripped = strip(src);
    let mut items = Vec::new();
    let mut stack: Vec<Scope> = Vec::new();
    let mut header = String::new();
    let mut cfg_test = false;
    let mut pending_field: Option<(usize, String, String, String)> = None;

    for (n, line) in stripped.lines().enumerate() {
        let orig = original.get(n).copied().unwrap_or("");
        let skipping = stack.iter().any(|s| matches!(s, Scope::Skip));
        let trimmed = line.trim();
        if orig.trim().starts_with("#[cfg(test)]") {
            cfg_test = true;
        }

        if !skipping {
            // A struct field, possibly spanning lines until its angle brackets balance.
            if let Some((start, owner, field, mut ty)) = pending_field.take() {
                ty.push_str(trimmed);
                if balanced(&ty) {
                    if holds_state(&ty) {
                        items.push(Item {
                            file: rel.into(),
                            line: start,
                            what: "field",
                            key: format!("{owner}.{field}"),
                        });
                    }
                } else {
                    pending_field = Some((start, owner, field, ty));
                }
            } else if let Some(Scope::Struct(owner)) = stack.last()
                && let Some((field, ty)) = field_of(trimmed)
            {
                if balanced(ty) {
                    if holds_state(ty) {
                        items.push(Item {
                            file: rel.into(),
                            line: n + 1,
                            what: "field",
                            key: format!("{owner}.{field}"),
                        });
                    }
                } else {
                    pending_field = Some((n + 1, owner.clone(), field.into(), ty.into()));
                }
            }
            if let Some(name) = item_name(trimmed, "static") {
                items.push(Item {
                    file: rel.into(),
                    line: n + 1,
                    what: "static",
                    key: name.into(),
                });
            }
            if trimmed.contains("thread_local!") {
                items.push(Item {
                    file: rel.into(),
                    line: n + 1,
                    what: "thread_local",
                    key: "thread_local".into(),
                });
            }
            if let Some(name) = item_name(trimmed, "type")
                && let Some(eq) = trimmed.find('=')
                && holds_state(&trimmed[eq..])
            {
                items.push(Item {
                    file: rel.into(),
                    line: n + 1,
                    what: "type alias",
                    key: name.into(),
                });
            }
            if SPAWNS.iter().any(|s| line.contains(s))
                || (trimmed.starts_with(".spawn") && trimmed.contains('('))
            {
                items.push(Item {
                    file: rel.into(),
                    line: n + 1,
                    what: "spawned task",
                    key: spawn_key(orig, &stack),
                });
            }
        }

        for c in line.chars() {
            match c {
                '{' => {
                    let scope = if skipping {
                        Scope::Other
                    } else {
                        classify(&header, cfg_test)
                    };
                    if !matches!(scope, Scope::Other) {
                        cfg_test = false;
                    }
                    stack.push(scope);
                    header.clear();
                }
                '}' => {
                    stack.pop();
                    header.clear();
                }
                ';' => {
                    header.clear();
                    cfg_test = cfg_test && trimmed.starts_with("#[");
                }
                _ => header.push(c),
            }
        }
        header.push(' ');
    }
    items
}

fn balanced(ty: &str) -> bool {
    let opens = ty.matches('<').count() + ty.matches('(').count();
    let closes = ty.matches('>').count() - ty.matches("->").count() + ty.matches(')').count();
    opens <= closes
}

fn field_of(line: &str) -> Option<(&str, &str)> {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = r.trim_start();
        if rest.starts_with('(') {
            rest = rest[rest.find(')')? + 1..].trim_start();
        }
    }
    let colon = rest.find(':')?;
    let name = &rest[..colon];
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    if rest[colon..].starts_with("::") {
        return None;
    }
    Some((name, rest[colon + 1..].trim()))
}

fn spawn_key(orig: &str, stack: &[Scope]) -> String {
    for pat in ["spawn(", "spawn_untracked("] {
        if let Some(p) = orig.find(pat) {
            let arg = orig[p + pat.len()..].trim_start();
            if let Some(lit) = arg.strip_prefix('"')
                && let Some(end) = lit.find('"')
            {
                return lit[..end].to_string();
            }
        }
    }
    let function = stack.iter().rev().find_map(|s| match s {
        Scope::Fn(name) => Some(name.clone()),
        _ => None,
    });
    let owner = stack.iter().rev().find_map(|s| match s {
        Scope::Impl(name) => Some(name.clone()),
        _ => None,
    });
    match (owner, function) {
        (Some(t), Some(f)) => format!("{t}::{f}"),
        (None, Some(f)) => f,
        _ => "<top level>".into(),
    }
}

/// The inventory rows of `docs/statelessness.md`: each with its backticked spans.
fn inventory_rows(doc: &str) -> Vec<(usize, Vec<String>)> {
    let mut rows = Vec::new();
    for (n, line) in doc.lines().enumerate() {
        let cells: Vec<&str> = line.trim().split('|').collect();
        // | state | where | holds | truth | rebuilt | lost | test |  → 9 pieces
        if !line.starts_with('|') || cells.len() != 9 || cells[1].trim() == "state" {
            continue;
        }
        if cells[1].trim().starts_with("---") {
            continue;
        }
        let truth = cells[4].trim();
        let lost = cells[6].trim();
        if truth.is_empty() || lost.is_empty() {
            continue;
        }
        let mut spans = Vec::new();
        let mut parts = line.split('`');
        parts.next();
        while let Some(span) = parts.next() {
            spans.push(span.to_string());
            parts.next();
        }
        rows.push((n + 1, spans));
    }
    rows
}

fn names(span: &str, key: &str) -> bool {
    span.match_indices(key).any(|(i, _)| {
        let before = span[..i].chars().last();
        let after = span[i + key.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

#[test]
fn process_state_has_a_row_in_statelessness_md() {
    let root = repo_root();
    let src = root.join("broker/src");
    let doc_path = root.join("docs/statelessness.md");
    let doc = fs::read_to_string(&doc_path).expect("docs/statelessness.md");
    let rows = inventory_rows(&doc);
    assert!(rows.len() > 20, "the inventory tables were not found");

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = fs::read_to_string(f).expect("source file");
        found.extend(scan(&rel, &text));
    }
    // The scanner itself must see the state everyone knows is there, or it checks nothing.
    for known in ["Hub.meshes", "Node.accepting", "Batcher::spawn"] {
        assert!(
            found.iter().any(|i| i.key == known),
            "the scanner no longer finds `{known}`: fix the scanner, not the doc"
        );
    }

    let mut missing = BTreeSet::new();
    for item in &found {
        let file_span = item.file.as_str();
        let covered = rows.iter().any(|(_, spans)| {
            spans.iter().any(|s| s == file_span) && spans.iter().any(|s| names(s, &item.key))
        });
        if !covered {
            missing.insert(format!(
                "  broker/src/{}:{}: {} `{}`",
                item.file, item.line, item.what, item.key
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "process-wide state without a row in docs/statelessness.md.\n\
         Add a row to the inventory (sections A to E) that names the file as `{{path}}` and \
         the item as `{{key}}` in backticks, and says what it holds, whose truth it is and \
         what a replica's death loses:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// GitHub's heading anchors: lowercase, punctuation dropped, spaces to dashes.
fn anchors(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let text = line.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut candidate = slug.clone();
        let mut k = 1;
        while out.contains(&candidate) {
            candidate = format!("{slug}-{k}");
            k += 1;
        }
        out.insert(candidate);
    }
    out
}

#[test]
fn relative_links_in_the_docs_resolve() {
    let root = repo_root();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut in_docs: Vec<_> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    in_docs.sort();
    docs.extend(in_docs);

    let mut broken = Vec::new();
    for doc in &docs {
        let text = fs::read_to_string(doc).expect("doc");
        let mut fenced = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            let mut rest = line;
            while let Some(p) = rest.find("](") {
                let after = &rest[p + 2..];
                let Some(end) = after.find(')') else { break };
                let target = &after[..end];
                rest = &after[end..];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target, None),
                };
                let file = if path.is_empty() {
                    doc.clone()
                } else {
                    doc.parent().expect("parent").join(path)
                };
                let where_ = format!(
                    "{}:{}: ({target})",
                    doc.strip_prefix(&root).unwrap_or(doc).display(),
                    n + 1
                );
                if !file.exists() {
                    broken.push(format!("  {where_}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor
                    && file.extension().is_some_and(|e| e == "md")
                {
                    let target_text = fs::read_to_string(&file).expect("linked doc");
                    if !anchors(&target_text).contains(anchor) {
                        broken.push(format!("  {where_}: no heading with this anchor"));
                    }
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken relative links:\n{}",
        broken.join("\n")
    );
}

/// Whether `word` occurs in `text` as an identifier of its own.
fn has_word(text: &str, word: &str) -> bool {
    names(text, word)
}

#[test]
fn tests_named_in_statelessness_md_exist() {
    let root = repo_root();
    let doc = fs::read_to_string(root.join("docs/statelessness.md")).expect("statelessness.md");
    let mut missing = BTreeSet::new();
    let mut checked = 0;
    // The "backed by test" column (the last) of every inventory row.
    let spans: Vec<&str> = doc
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().split('|').collect();
            (line.starts_with('|') && cells.len() == 9).then(|| cells[7])
        })
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .collect();
    for span in spans {
        let segments: Vec<&str> = span.split("::").collect();
        if segments.len() < 2
            || !segments.iter().all(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
        {
            continue;
        }
        let file = root
            .join("broker/tests")
            .join(format!("{}.rs", segments[0]));
        let Ok(text) = fs::read_to_string(&file) else {
            continue; // a unit test or a path in the source, not an integration test
        };
        checked += 1;
        // Macro-generated tests (`file::suite::backend::test`) name their modules in the
        // macro: every segment must occur in the file, the test itself as a function or
        // a macro argument.
        if let Some(absent) = segments[1..].iter().find(|s| !has_word(&text, s)) {
            missing.insert(format!(
                "  `{span}`: no `{absent}` in broker/tests/{}.rs",
                segments[0]
            ));
        }
    }
    assert!(checked > 30, "the test references were not found");
    assert!(
        missing.is_empty(),
        "docs/statelessness.md names tests that do not exist:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_scanner_finds_locks_statics_and_spawns_but_not_tests_or_strings() {
    let src = r#"
static COUNT: AtomicU64 = AtomicU64::new(0);
pub struct Cache {
    /// A `Mutex<` in a comment is no field.
    entries: std::sync::Mutex<HashMap<String, (u8, char)>>,
    plain: HashMap<String, String>,
    open: Arc<
        AtomicBool,
    >,
}
impl<T: Send + 'static> Cache {
    fn start(&self) {
        let s = "tokio::spawn( { in a string";
        let c = '{';
        tokio::spawn(async move {});
    }
}
fn run(workers: &Workers) {
    workers.spawn("sweep", Restart::OnFailure, move || work());
}
#[cfg(test)]
mod tests {
    fn helper() { tokio::spawn(async {}); }
    static IN_TEST: u8 = 0;
}
"#;
    let keys: Vec<String> = scan("x.rs", src).into_iter().map(|i| i.key).collect();
    assert_eq!(
        keys,
        [
            "COUNT",
            "Cache.entries",
            "Cache.open",
            "Cache::start",
            "sweep"
        ],
        "{keys:?}"
    );
}

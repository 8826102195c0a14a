//! Where a config error is: the file, line and dotted key that a YAML parse error, a type
//! error or a validation message concerns (block and flow style, the base file, `--set`).

use crate::error::Error;
use std::path::Path;

pub(super) fn config_err(file: &Path, msg: impl Into<String>) -> Error {
    Error::Config {
        file: file.to_path_buf(),
        msg: msg.into(),
    }
}

/// The dotted key path of the block-style YAML key on (1-based) `line`, from indentation.
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let body = l.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = l.len() - body.len();
        let Some((key, _)) = body.split_once(':') else {
            continue;
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_alphanumeric() || "_.-".contains(c))
        {
            continue;
        }
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        if i + 1 == line {
            return Some(
                stack
                    .iter()
                    .map(|(_, k)| k.as_str())
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
    }
    None
}

/// A YAML error with the file, line and dotted key it concerns.
pub(super) fn yaml_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> Error {
    let msg = e.to_string();
    // The parser's own wording for two limits, in the tool's words.
    let at = e
        .location()
        .map(|l| format!("line {}: ", l.line()))
        .unwrap_or_default();
    if msg.contains("multiple YAML documents") {
        return config_err(
            path,
            format!(
                "{at}the file holds more than one YAML document (a `---` line starts another); \
                 an experiment file is one mapping"
            ),
        );
    }
    if msg.contains("budget breached") {
        return config_err(
            path,
            format!(
                "{at}the file is larger than the YAML parser's limits allow (at most 250,000 \
                 values, nesting and aliases bounded); a sweep has at most {} runs",
                super::ranges::MAX_RUNS
            ),
        );
    }
    let line = e.location().map(|l| l.line() as usize).or_else(|| {
        // serde reports unknown fields and unknown enum values without a position: find the
        // offending key, or the key whose value it is.
        if let Some(field) = msg
            .split("unknown field `")
            .nth(1)
            .and_then(|r| r.split('`').next())
        {
            let pat = format!("{field}:");
            return text
                .lines()
                .position(|l| l.trim_start().starts_with(&pat))
                .or_else(|| {
                    // Flow style: `{a: 1, field: 2}`.
                    text.lines().position(|l| {
                        l.match_indices(&pat)
                            .any(|(i, _)| l[..i].chars().last().is_some_and(|c| " {,".contains(c)))
                    })
                })
                .map(|i| i + 1);
        }
        let value = msg.split("unknown variant `").nth(1)?.split('`').next()?;
        text.lines()
            .position(|l| {
                l.split_once(':')
                    .is_some_and(|(_, v)| v.trim().trim_matches(['"', '\'']) == value)
            })
            .or_else(|| {
                // A mapping where a plain value belongs (`method: {kind: x}`): the variant name
                // is the mapping's key.
                let key = format!("{value}:");
                text.lines().position(|l| {
                    l.contains(&format!("{{{key}")) || l.trim_start().starts_with(&key)
                })
            })
            .map(|i| i + 1)
    });
    match line {
        Some(n) => {
            let mut key = key_path_at(text, n);
            // In a flow mapping (`world: {eval_per_suite: 1e12}`) the key is the one before
            // the error's column.
            let col = e.location().map(|l| l.column() as usize).unwrap_or(0);
            if let (Some(k), Some(inner)) = (&key, flow_key_before(text, n, col)) {
                key = Some(format!("{k}.{inner}"));
            }
            let key = key.map(|k| format!(" key `{k}`:")).unwrap_or_default();
            config_err(path, format!("line {n}:{key} {msg}"))
        }
        None => config_err(path, msg),
    }
}

/// The innermost flow-mapping keys before (1-based) column `col` of line `n`, dotted
/// (`{train: {lr: x}}` at x gives `train.lr`), or None outside a flow mapping.
fn flow_key_before(text: &str, n: usize, col: usize) -> Option<String> {
    let line = text.lines().nth(n.checked_sub(1)?)?;
    let upto: String = line.chars().take(col.saturating_sub(1)).collect();
    let open = upto.find('{')?;
    let mut stack: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut last_key: Option<String> = None;
    for c in upto[open + 1..].chars() {
        match c {
            '{' => {
                if let Some(k) = last_key.take() {
                    stack.push(k);
                }
                word.clear();
            }
            '}' => {
                stack.pop();
                last_key = None;
                word.clear();
            }
            ':' => {
                last_key = Some(word.trim().to_string());
                word.clear();
            }
            ',' => {
                last_key = None;
                word.clear();
            }
            _ => word.push(c),
        }
    }
    let k = last_key?;
    stack.push(k);
    Some(stack.join("."))
}

/// The (1-based) line of a dotted key (`api.tiers[1].rpm`) in a YAML text: the block key
/// with that path, else the line whose key (block or flow style) shares most of the path.
pub(super) fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let plain: Vec<&str> = key
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .filter(|p| !p.is_empty())
        .collect();
    let last = *plain.last()?;
    let n_lines = text.lines().count();
    let joined = plain.join(".");
    let mut best: Option<(usize, usize)> = None;
    for n in 1..=n_lines {
        let path = key_path_at(text, n);
        if path.as_deref() == Some(joined.as_str()) {
            return Some(n);
        }
        let line = text.lines().nth(n - 1).unwrap_or("");
        let has_key = line
            .match_indices(&format!("{last}:"))
            .any(|(i, _)| i == 0 || line[..i].chars().last().is_some_and(|c| " {,-".contains(c)));
        if has_key {
            // How much of the path the enclosing block keys share.
            let enclosing = (1..=n)
                .rev()
                .find_map(|m| key_path_at(text, m))
                .unwrap_or_default();
            let shared = enclosing
                .split('.')
                .zip(&plain)
                .take_while(|(a, b)| a == *b)
                .count();
            if best.is_none_or(|(s, _)| shared > s) {
                best = Some((shared, n));
            }
        }
    }
    best.map(|(_, n)| n)
}

/// An error about `key` (a message that starts `key: ...`), placed at the line of the file
/// that sets it: the experiment file, its base, or a `--set`.
pub(super) fn located(
    files: &[(&Path, &str)],
    overrides: &[(String, String)],
    key: &str,
    msg: &str,
    grid_keys: &[&str],
) -> Error {
    let body = msg
        .strip_prefix(key)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(msg);
    let plain: String = key
        .split('.')
        .map(|p| p.split('[').next().unwrap_or(p))
        .collect::<Vec<_>>()
        .join(".");
    if let Some((k, v)) = overrides
        .iter()
        .find(|(k, _)| plain == *k || plain.starts_with(&format!("{k}.")))
    {
        return config_err(files[0].0, format!("--set {k}={v}: key `{key}`: {body}"));
    }
    // A value of a grid axis is at the axis's line, not at the key's line outside the grid.
    if let Some(axis) = grid_keys
        .iter()
        .find(|k| plain == **k || plain.starts_with(&format!("{k}.")))
    {
        for (file, text) in files {
            if let Some(n) = find_grid_line(text, axis) {
                return config_err(file, format!("line {n}: key `grid.{axis}`: {body}"));
            }
        }
    }
    for (file, text) in files {
        if let Some(n) =
            find_key_line(text, key).or_else(|| find_key_line(text, &format!("grid.{key}")))
        {
            return config_err(file, format!("line {n}: key `{key}`: {body}"));
        }
    }
    config_err(files[0].0, format!("key `{key}`: {body}"))
}

/// The key a validation message is about (`key: ...`), if it starts with one.
fn message_key(msg: &str) -> Option<&str> {
    let (k, _) = msg.split_once(": ")?;
    (!k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c)))
    .then_some(k)
}

pub(super) fn prefix_context(e: Error, context: &str) -> Error {
    match e {
        Error::Config { file, msg } if !context.is_empty() => Error::Config {
            file,
            msg: format!("{context}: {msg}"),
        },
        e => e,
    }
}

/// A validation error, placed at its key's line where the message names one.
pub(super) fn validation_error(
    files: &[(&Path, &str)],
    overrides: &[(String, String)],
    msg: String,
    context: &str,
    grid_keys: &[&str],
) -> Error {
    let e = match message_key(&msg) {
        Some(key) => located(files, overrides, key, &msg, grid_keys),
        None => config_err(files[0].0, msg.clone()),
    };
    prefix_context(e, context)
}

/// The line of a grid axis (`grid: {attacker.budget: [...]}` or the block form), for errors
/// about one of its values.
pub(super) fn find_grid_line(text: &str, key: &str) -> Option<usize> {
    let mut in_grid = false;
    for (i, l) in text.lines().enumerate() {
        let top = !l.starts_with([' ', '\t']) && !l.trim().is_empty() && !l.starts_with('#');
        if top {
            in_grid = l.starts_with("grid:");
        }
        if !in_grid {
            continue;
        }
        let hit = l
            .match_indices(&format!("{key}:"))
            .any(|(j, _)| l[..j].chars().last().is_none_or(|c| " {,\"'".contains(c)));
        if hit {
            return Some(i + 1);
        }
    }
    None
}

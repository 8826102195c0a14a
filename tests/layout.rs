//! The house rules of the source tree, checked on the text of `src/`: no two sibling modules
//! that refer to each other (directly or round a longer loop), and the experiment layer and
//! the binary in functions of one sitting. Comments and test modules do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file under `src/` (`experiment::config`; `lib.rs` and `main.rs` are the
/// root, `mod.rs` its directory).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests` module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules each module refers to through `crate::`, `super::` or `self::` paths.
fn references(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mods: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| (module_of(src, f), std::fs::read_to_string(f).unwrap()))
        .collect();
    let mut refs: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (m, text) in &mods {
        if m.last().is_some_and(|x| x == "tests") {
            continue;
        }
        let code = code(text);
        let bytes = code.as_bytes();
        for start in ["crate::", "super::", "self::"] {
            for (i, _) in code.match_indices(start) {
                if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
                    continue;
                }
                let path: Vec<&str> = code[i..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                let mut base: Vec<String> = match path[0] {
                    "crate" => vec![],
                    _ => m.clone(),
                };
                let mut rest = &path[1..];
                if path[0] == "super" {
                    base.pop();
                    while rest.first() == Some(&"super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                }
                let full: Vec<String> = base
                    .into_iter()
                    .chain(rest.iter().map(|s| s.to_string()))
                    .collect();
                // The longest prefix that is a module.
                let Some(target) = (1..=full.len())
                    .rev()
                    .map(|k| full[..k].to_vec())
                    .find(|p| mods.contains_key(p))
                else {
                    continue;
                };
                let nested = target.starts_with(m) || m.starts_with(&target);
                if !nested {
                    refs.entry(m.clone()).or_default().insert(target);
                }
            }
        }
    }
    refs
}

/// Each reference lifted to the two siblings under the modules' common ancestor.
fn sibling_graph(
    refs: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (a, targets) in refs {
        for b in targets {
            let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            let (x, y) = (a[..=common].to_vec(), b[..=common].to_vec());
            g.entry(x).or_default().insert(y);
        }
    }
    g
}

#[test]
fn no_two_modules_refer_to_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = sibling_graph(&references(&src));
    // A cycle: a module that reaches itself again through the sibling graph.
    let mut cycles = Vec::new();
    for start in g.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Vec<String>> = g[start].iter().collect();
        while let Some(m) = todo.pop() {
            if m == start {
                cycles.push(start.join("::"));
                break;
            }
            if seen.insert(m) {
                todo.extend(g.get(m).into_iter().flatten());
            }
        }
    }
    assert!(cycles.is_empty(), "modules on an import cycle: {cycles:?}");
    // The check sees references at all (a parser that found none would pass anything).
    let config = vec!["experiment".to_string(), "config".to_string()];
    assert!(g[&config].contains(&vec!["experiment".to_string(), "ranges".to_string()]));
}

#[test]
fn the_runner_and_the_binary_are_functions_of_one_sitting() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("src/main.rs"), root.join("src/cli.rs")];
    rust_files(&root.join("src/experiment"), &mut files);
    let mut long = Vec::new();
    let mut longest = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(super) fn ",
                "pub(crate) fn ",
                "unsafe fn ",
            ]
            .iter()
            .any(|p| t.starts_with(p));
            if !is_fn {
                continue;
            }
            let indent = &l[..l.len() - t.len()];
            let end = lines[i + 1..]
                .iter()
                .position(|x| *x == format!("{indent}}}"))
                .map(|k| k + 2);
            if let Some(n) = end {
                longest = longest.max(n);
                if n > 80 {
                    long.push(format!("{}:{} ({n} lines)", f.display(), i + 1));
                }
            }
        }
    }
    assert!(long.is_empty(), "functions over 80 lines: {long:?}");
    assert!(longest > 20, "no function found: the scan is broken");
    let main = std::fs::read_to_string(root.join("src/main.rs")).unwrap();
    assert!(
        main.lines().count() <= 250,
        "main.rs is {} lines",
        main.lines().count()
    );
}

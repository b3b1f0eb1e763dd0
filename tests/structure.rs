//! The house's structure, read from the source (issue 22): the top-level
//! modules of `src/` import each other without a circle, the protocol
//! imports nothing of the crate, the lower floors never reach up to the
//! composition root, no source file outgrows 600 lines, and a function
//! over 120 lines says why in its doc.
//!
//! `cargo test --test gateway structure:: -- --nocapture` prints the figures
//! (modules, layers, imports between modules, the largest files and
//! functions) that the closing notes quote; `STRUCTURE_ROOT=DIR` measures
//! another checkout.
//!
//! An import is a `crate::name` path outside comments (in `main.rs`,
//! `chatgw::name`), `use crate::{a, b}` included; a module is a top-level
//! file or folder of `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a source file may hold.
const MAX_FILE_LINES: usize = 600;

/// Longer than this, a function's doc says why it is one function.
const MAX_FUNCTION_LINES: usize = 120;

/// Imports that must never exist: (importer, imported). The hub and
/// everything under it are given their handles; they never take the
/// composition root, the HTTP edge or the raw configuration.
const NEVER: &[(&str, &str)] = &[
    ("hub", "state"),
    ("hub", "api"),
    ("hub", "config"),
    ("hub", "startup"),
    ("hub", "error"),
    ("db", "hub"),
    ("db", "api"),
    ("db", "state"),
    ("db", "push"),
    ("auth", "state"),
    ("auth", "api"),
    ("auth", "config"),
    ("metrics", "hub"),
    ("net", "state"),
];

/// This checkout, or the one `STRUCTURE_ROOT` names (to measure another
/// commit with the same rules: the closing notes' "before").
fn root() -> PathBuf {
    std::env::var_os("STRUCTURE_ROOT").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !p.ends_with("node_modules") && !p.ends_with("generated") {
                files(&p, ext, out);
            }
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

/// The source without `//` comments (doc links are not imports) and
/// without the contents of string literals.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file's code names through `prefix::`.
fn imports_of(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first name of each
            // item at depth one.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        found.insert(ident_at(&group[i..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

struct House {
    /// module -> module it imports -> the files that do.
    edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    modules: BTreeSet<String>,
    files: usize,
}

fn read_house() -> House {
    let src = root().join("src");
    let mut paths = Vec::new();
    files(&src, "rs", &mut paths);
    let mut house = House { edges: BTreeMap::new(), modules: BTreeSet::new(), files: paths.len() };
    for p in &paths {
        let module = module_of(&src, p);
        if module == "lib" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(p).expect("readable source"));
        let prefix = if module == "main" { "chatgw::" } else { "crate::" };
        house.modules.insert(module.clone());
        for target in imports_of(&code, prefix) {
            if target != module {
                let rel = p.strip_prefix(root()).unwrap_or(p).display().to_string();
                house.edges.entry(module.clone()).or_default().entry(target).or_default().insert(rel);
            }
        }
    }
    house
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(house: &House) -> Vec<Vec<String>> {
    struct T<'a> {
        house: &'a House,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        let house = t.house;
        for w in house.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        house,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for m in &house.modules {
        if !t.index.contains_key(m.as_str()) {
            visit(&mut t, m);
        }
    }
    t.out
}

/// Each module's floor in a house without circles: 1 for a module that
/// imports nothing of the crate, else one above the highest it imports.
fn floors(house: &House) -> BTreeMap<String, usize> {
    fn floor(house: &House, m: &str, memo: &mut BTreeMap<String, usize>, depth: usize) -> usize {
        if let Some(f) = memo.get(m) {
            return *f;
        }
        // A circle would recurse for ever; the circle test reports it.
        if depth > house.modules.len() {
            return 0;
        }
        let f = 1 + house
            .edges
            .get(m)
            .into_iter()
            .flat_map(|t| t.keys())
            .map(|t| floor(house, t, memo, depth + 1))
            .max()
            .unwrap_or(0);
        memo.insert(m.to_owned(), f);
        f
    }
    let mut memo = BTreeMap::new();
    for m in &house.modules {
        floor(house, m, &mut memo, 0);
    }
    memo
}

#[test]
fn top_level_modules_import_each_other_without_a_circle() {
    let house = read_house();
    print_figures(&house);
    let found = circles(&house);
    let mut why = String::new();
    for scc in &found {
        why.push_str(&format!("circle of {} modules: {}\n", scc.len(), scc.join(", ")));
        for a in scc {
            for (b, files) in house.edges.get(a).into_iter().flatten() {
                if scc.contains(b) {
                    let files: Vec<_> = files.iter().map(String::as_str).collect();
                    why.push_str(&format!("  {a} -> {b}: {}\n", files.join(", ")));
                }
            }
        }
    }
    assert!(found.is_empty(), "the module graph has circles:\n{why}");
}

#[test]
fn the_protocol_imports_nothing_of_the_crate_and_no_floor_reaches_up() {
    let house = read_house();
    if let Some(targets) = house.edges.get("protocol") {
        panic!("protocol imports {:?}: it must stand alone (loadtest, fuzz and tests use it)", targets);
    }
    let broken: Vec<String> = NEVER
        .iter()
        .filter_map(|(a, b)| {
            let files = house.edges.get(*a)?.get(*b)?;
            Some(format!("{a} -> {b} in {files:?}"))
        })
        .collect();
    assert!(broken.is_empty(), "imports that must never be: {broken:#?}");
}

#[test]
fn no_source_file_is_over_600_lines() {
    let r = root();
    let mut paths = Vec::new();
    files(&r.join("src"), "rs", &mut paths);
    files(&r.join("loadtest/src"), "rs", &mut paths);
    files(&r.join("clients/typescript/src"), "ts", &mut paths);
    files(&r.join("clients/typescript/demo/src"), "ts", &mut paths);
    let over: Vec<(usize, String)> = paths
        .iter()
        .map(|p| {
            let n = std::fs::read_to_string(p).expect("readable source").lines().count();
            (n, p.strip_prefix(&r).unwrap_or(p).display().to_string())
        })
        .filter(|(n, _)| *n > MAX_FILE_LINES)
        .collect();
    assert!(over.is_empty(), "files over {MAX_FILE_LINES} lines: {over:?}");
}

/// A function's length, its place (`file: name`) and its doc comment.
struct Function {
    lines: usize,
    place: String,
    doc: String,
}

/// Every function of `src/` and `loadtest/src/`, longest first
/// (brace-matched; a rough measure).
fn functions() -> Vec<Function> {
    let r = root();
    let mut paths = Vec::new();
    files(&r.join("src"), "rs", &mut paths);
    files(&r.join("loadtest/src"), "rs", &mut paths);
    let mut out = Vec::new();
    for p in &paths {
        let raw = std::fs::read_to_string(p).expect("readable source");
        let raw_lines: Vec<&str> = raw.lines().collect();
        let code = code_of(&raw);
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(at) = line.find("fn ") else { continue };
            let head = line[..at].trim();
            let is_fn = head
                .split_whitespace()
                .all(|w| matches!(w, "pub" | "async" | "const" | "unsafe") || w.starts_with("pub("));
            if !is_fn {
                continue;
            }
            let name = ident_at(&line[at + 3..]).to_owned();
            let mut depth = 0i32;
            let mut started = false;
            for (j, l) in lines[i..].iter().enumerate() {
                for c in l.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            started = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if !started && l.trim_end().ends_with(';') {
                    break;
                }
                if started && depth <= 0 {
                    let rel = p.strip_prefix(&r).unwrap_or(p).display().to_string();
                    let doc: Vec<&str> = raw_lines[..i]
                        .iter()
                        .rev()
                        .map(|l| l.trim())
                        .take_while(|l| l.starts_with("///") || l.starts_with("#["))
                        .collect();
                    let doc = doc.into_iter().rev().collect::<Vec<_>>().join(" ");
                    out.push(Function { lines: j + 1, place: format!("{rel}: {name}"), doc });
                    break;
                }
            }
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.lines));
    out
}

/// A function over 120 lines says why in its doc: it names its length
/// ("Over 120 lines because …") or why it is one function.
#[test]
fn a_function_over_120_lines_says_why() {
    let unexplained: Vec<String> = functions()
        .into_iter()
        .filter(|f| f.lines > MAX_FUNCTION_LINES)
        .filter(|f| {
            let doc = f.doc.to_lowercase();
            !(doc.contains("120") || doc.contains("one function"))
        })
        .map(|f| format!("{} ({} lines)", f.place, f.lines))
        .collect();
    assert!(
        unexplained.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines without a why in their doc: {unexplained:?}"
    );
}

/// Prints the figures the closing notes quote (seen with `--nocapture`).
fn print_figures(house: &House) {
    let found = circles(house);
    let floors = floors(house);
    let imports: usize = house.edges.values().map(|t| t.len()).sum();
    let in_circles: usize = found
        .iter()
        .map(|scc| {
            scc.iter()
                .map(|a| house.edges.get(a).map_or(0, |t| t.keys().filter(|b| scc.contains(b)).count()))
                .sum::<usize>()
        })
        .sum();
    println!("source files under src/: {}", house.files);
    println!("top-level modules: {}", house.modules.len());
    println!("imports between modules: {imports}");
    println!("circles: {} (imports inside them: {in_circles})", found.len());
    if found.is_empty() {
        println!("floors: {}", floors.values().max().copied().unwrap_or(0));
        let mut by_floor: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for (m, f) in &floors {
            by_floor.entry(*f).or_default().push(m);
        }
        for (f, ms) in by_floor.iter().rev() {
            println!("  floor {f}: {}", ms.join(", "));
        }
    }
    let src = root().join("src");
    let mut paths = Vec::new();
    files(&src, "rs", &mut paths);
    let mut sizes: Vec<(usize, String)> = paths
        .iter()
        .map(|p| {
            let n = std::fs::read_to_string(p).expect("readable source").lines().count();
            (n, p.strip_prefix(root()).unwrap_or(p).display().to_string())
        })
        .collect();
    sizes.sort_by(|a, b| b.cmp(a));
    println!("largest files: {:?}", &sizes[..3.min(sizes.len())]);
    let longest: Vec<String> = functions().into_iter().take(5).map(|f| format!("{} ({})", f.place, f.lines)).collect();
    println!("longest functions: {longest:?}");
}

/// The numbered path in `hub/mod.rs`'s doc names real things: every file
/// in brackets exists under `src/`, and every `Type::function` or
/// `module::function` it names is a function defined in `src/`.
#[test]
fn the_message_path_in_the_hub_doc_names_what_exists() {
    let src = root().join("src");
    let doc: Vec<String> = std::fs::read_to_string(src.join("hub/mod.rs"))
        .expect("hub/mod.rs")
        .lines()
        .map_while(|l| l.strip_prefix("//!").map(str::trim).map(str::to_owned))
        .collect();
    let start = doc.iter().position(|l| l.starts_with("1. ")).expect("a numbered path in hub's module doc");
    let mut steps = 0;
    let mut text = String::new();
    for line in &doc[start..] {
        if line.is_empty() {
            break;
        }
        if line.split_once(". ").is_some_and(|(n, _)| n.parse::<u32>().is_ok()) {
            steps += 1;
        }
        text.push_str(line);
        text.push(' ');
    }
    assert!(steps >= 5, "the path has {steps} numbered steps");
    let mut paths = Vec::new();
    files(&src, "rs", &mut paths);
    let code: String = paths.iter().map(|p| std::fs::read_to_string(p).expect("readable source")).collect();
    let mut missing = Vec::new();
    for (i, quoted) in text.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        if quoted.ends_with(".rs") {
            if !src.join(quoted).is_file() {
                missing.push(format!("file {quoted}"));
            }
        } else {
            // `Type::function`, `module::function`, or a bare snake_case
            // function name.
            let name = quoted.rsplit_once("::").map_or(quoted, |(_, n)| n);
            let is_fn = quoted.contains("::")
                || (name.contains('_') && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if is_fn && !code.contains(&format!("fn {name}(")) && !code.contains(&format!("fn {name}<")) {
                missing.push(format!("function {quoted}"));
            }
        }
    }
    assert!(missing.is_empty(), "the path names what does not exist: {missing:?}");
}

//! The shape of the code, checked as a reviewer would: the top-level modules
//! of `src/` depend on each other without cycles, so each layer can be read
//! (and tested) knowing only the ones below it. Read from the source text:
//! every `crate::<module>` a non-test line names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Whether a file holds only tests (`tests.rs`, or inside a `tests/` folder).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
}

/// The lines of `text` that are code outside tests: comments dropped, and
/// nothing after a `#[cfg(test)]` module (a file's tests come last).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut lines = text.lines().peekable();
    std::iter::from_fn(move || loop {
        let line = lines.next()?;
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            return None;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        return Some(line.split("//").next().unwrap_or(line));
    })
}

/// The top-level module a file of `src/` belongs to (`None` for the crate root and binaries).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(SRC).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        _ => Some(first.trim_end_matches(".rs").to_owned()),
    }
}

/// Which top-level modules each one names, outside tests.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in rust_files(Path::new(SRC)) {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let uses = graph.entry(module.clone()).or_default();
        if is_test_file(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in code_lines(&text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through the graph, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_depend_on_each_other_without_cycles() {
    let graph = dependencies();
    assert!(
        graph.len() >= 8,
        "the modules of src/ were not found: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the modules of src/ depend on each other in a cycle: {}\nall dependencies: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("api", &["sync"][..]),
        ("fs", &["api", "metrics"][..]),
        ("metrics", &["fs"][..]),
        ("sync", &[][..]),
    ]
    .into_iter()
    .map(|(m, deps)| (m.into(), deps.iter().map(|d| d.to_string()).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["fs".into(), "metrics".into(), "fs".into()])
    );
}

/// The non-test source files of `src/`, with their text.
fn sources() -> Vec<(PathBuf, String)> {
    rust_files(Path::new(SRC))
        .into_iter()
        .filter(|p| !is_test_file(p))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(SRC).unwrap().display().to_string()
}

/// Lines up to a file's test module, comments included: what a newcomer reads.
fn lines_before_tests(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len())
}

/// Files a newcomer reads whole: no source file (tests apart) past 600 lines.
#[test]
fn no_source_file_is_over_600_lines() {
    let long: Vec<String> = sources()
        .iter()
        .map(|(path, text)| (path, lines_before_tests(text)))
        .filter(|(_, lines)| *lines > 600)
        .map(|(path, lines)| format!("{} ({lines} lines before its tests)", relative(path)))
        .collect();
    assert!(long.is_empty(), "split by what owns which state: {long:?}");
}

/// The fields of each `struct Name { ... }` in `text`, by name.
fn struct_fields(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let declared = trimmed
            .strip_prefix("pub ")
            .or_else(|| trimmed.strip_prefix("pub(crate) "))
            .or_else(|| trimmed.strip_prefix("pub(super) "))
            .unwrap_or(trimmed);
        let Some(rest) = declared.strip_prefix("struct ") else {
            continue;
        };
        if !rest.trim_end().ends_with('{') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut fields) = (1, 0);
        for body in lines.by_ref() {
            let code = body.split("//").next().unwrap_or(body);
            if depth == 1 {
                let field = code.trim_start();
                let field = field
                    .strip_prefix("pub ")
                    .or_else(|| field.strip_prefix("pub(crate) "))
                    .or_else(|| field.strip_prefix("pub(super) "))
                    .unwrap_or(field);
                let ident: String = field
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() && field[ident.len()..].starts_with(':') {
                    fields += 1;
                }
            }
            depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
            if depth <= 0 {
                break;
            }
        }
        found.push((name, fields));
    }
    found
}

/// Parts that own their state: no struct past 12 fields, but the
/// command line's (one field a flag).
#[test]
fn no_struct_outside_the_command_line_has_over_12_fields() {
    let mut wide = Vec::new();
    for (path, text) in sources() {
        if relative(&path) == "daemon/cli.rs" || relative(&path) == "prefetch.rs" {
            continue;
        }
        for (name, fields) in struct_fields(&text) {
            if fields > 12 {
                wide.push(format!("{} in {} ({fields} fields)", name, relative(&path)));
            }
        }
    }
    assert!(
        wide.is_empty(),
        "compose parts that own their state: {wide:?}"
    );
}

#[test]
fn the_field_count_sees_fields_and_not_their_types() {
    let text = "pub struct A {\n    pub a: u32,\n    b: Mutex<HashMap<u64, Vec<u8>>>,\n    // c: a comment\n    d: fn(u32) -> u32,\n}\nstruct B(u32);\nstruct C {\n    e: E,\n}\n";
    assert_eq!(
        struct_fields(text),
        vec![("A".to_owned(), 3), ("C".to_owned(), 1)]
    );
}

/// Errors keep their source below the boundary that logs them: no
/// `Result<_, String>` in the layers under the daemon.
#[test]
fn the_layers_under_the_daemon_return_no_string_errors() {
    let mut stringly = Vec::new();
    for (path, text) in sources() {
        let file = relative(&path);
        if !["fs/", "api/", "fleet/", "events/"]
            .iter()
            .any(|layer| file.starts_with(layer))
        {
            continue;
        }
        for line in code_lines(&text) {
            let compact: String = line.split_whitespace().collect();
            if compact.contains(",String>") && compact.contains("Result<") {
                stringly.push(format!("{file}: {}", line.trim()));
            }
        }
    }
    assert!(
        stringly.is_empty(),
        "give these a typed error that keeps its source: {stringly:#?}"
    );
}

/// The README's code map and `lib.rs` name every module there is.
#[test]
fn the_code_map_and_lib_rs_name_every_module() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let map = readme
        .split("## For developers")
        .nth(1)
        .expect("README has a 'For developers' section");
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let mut missing = Vec::new();
    for path in rust_files(Path::new(SRC)) {
        let file = relative(&path);
        if let Some(module) = module_of(&path) {
            if !lib.contains(&format!("pub mod {module};")) {
                missing.push(format!("lib.rs: pub mod {module}"));
            }
            if !map.contains(&format!("src/{module}")) {
                missing.push(format!("README: src/{module}"));
            }
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        if !matches!(name, "mod.rs" | "lib.rs" | "main.rs" | "tests.rs")
            && !file.starts_with("bin/")
            && !map.contains(&format!("`{name}`"))
            && !map.contains(&format!("`src/{file}`"))
        {
            missing.push(format!("README: {file}"));
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "not in the code map: {missing:?}");
}

//! Best-effort look at the root module's `.tf` files for the resources that set an attribute
//! to a literal value. Terraform never tells a provider a resource's address; when two
//! resources use one instance name, this lets the diagnostic name both where the names are
//! literals in the working directory (the provider runs there). Anything it cannot read
//! (modules, expressions, JSON configuration) simply yields nothing.

use std::path::Path;

/// `<type>.<label> (<file>:<line>)` of every `resource "<type>" "<label>"` block in the `.tf`
/// files of `dir` whose top-level `attribute` is the string literal `value`, in file order.
pub fn resources_setting(dir: &Path, type_name: &str, attribute: &str, value: &str) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf") && p.is_file())
        .collect();
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        for (label, line) in scan(&text, type_name, attribute, value) {
            found.push(format!("{type_name}.{label} ({file}:{line})"));
        }
    }
    found
}

/// The labels (and the 1-based line of the attribute) of the matching blocks in one file.
fn scan(text: &str, type_name: &str, attribute: &str, value: &str) -> Vec<(String, usize)> {
    let header = format!("resource \"{type_name}\" \"");
    let mut found = Vec::new();
    let mut depth = 0usize;
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if depth == 0 {
            if let Some(rest) = line.strip_prefix(&header) {
                current = rest.split('"').next().map(str::to_string);
            }
        } else if depth == 1 {
            if let (Some(label), Some((k, v))) = (&current, line.split_once('=')) {
                if k.trim() == attribute && v.trim() == format!("\"{value}\"") {
                    found.push((label.clone(), i + 1));
                }
            }
        }
        for c in braces(line) {
            if c == '{' {
                depth += 1;
            } else {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    current = None;
                }
            }
        }
    }
    found
}

/// The line without a trailing `#` or `//` comment (outside strings).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut prev = '\0';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            '/' if !in_string && prev == '/' => return &line[..i - 1],
            _ => {}
        }
        prev = c;
    }
    line
}

/// The braces of a line that are outside strings (`${...}` inside a string is not a block).
fn braces(line: &str) -> Vec<char> {
    let mut in_string = false;
    let mut prev = '\0';
    let mut out = Vec::new();
    for c in line.chars() {
        match c {
            '"' if prev != '\\' => in_string = !in_string,
            '{' | '}' if !in_string => out.push(c),
            _ => {}
        }
        prev = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_blocks_with_the_literal_at_top_level_only() {
        let text = r#"
resource "homelab_instance" "a" {
  name    = "acme" # the first
  workers = 1
  timeouts {
    name = "acme"
  }
}
resource "homelab_instance" "b" {
  name = "acme"
}
resource "homelab_instance" "c" {
  name = "k${count.index}"
}
resource "homelab_federation" "acme" {
  name = "acme"
}
// resource "homelab_instance" "d" {
"#;
        assert_eq!(
            scan(text, "homelab_instance", "name", "acme"),
            vec![("a".to_string(), 3), ("b".to_string(), 10)]
        );
    }

    #[test]
    fn names_files_and_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.tf"), "resource \"homelab_instance\" \"x\" {\n  name = \"n\"\n}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "resource \"homelab_instance\" \"y\" {\n  name = \"n\"\n}\n").unwrap();
        assert_eq!(resources_setting(dir.path(), "homelab_instance", "name", "n"), vec!["homelab_instance.x (main.tf:2)"]);
        assert!(resources_setting(&dir.path().join("missing"), "homelab_instance", "name", "n").is_empty());
    }
}

//! Generates `docs/` in the Terraform registry layout (`index.md`, `resources/<name>.md`,
//! `data-sources/<name>.md`, `ephemeral-resources/<name>.md`) from `terraform providers schema -json` output and the HCL under
//! `examples/`, in the shape tfplugindocs produces. Docs are never edited by hand: a test
//! regenerates them and fails when the committed ones differ.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The provider's registry address in the schema JSON.
pub const PROVIDER_ADDRESS: &str = "registry.terraform.io/homelab/homelab";
const PROVIDER_NAME: &str = "homelab";

/// Why docs could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The schema JSON is not what `terraform providers schema -json` prints.
    #[error("{path}: not a provider schema: {why}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
}

fn read(path: &Path) -> Result<String, DocsError> {
    std::fs::read_to_string(path).map_err(|source| DocsError::Io {
        path: path.into(),
        source,
    })
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The type of an attribute in words (`String`, `List of Object`, …).
pub fn type_words(t: &Value) -> String {
    match t {
        Value::String(s) => match s.as_str() {
            "string" => "String".into(),
            "number" => "Number".into(),
            "bool" => "Boolean".into(),
            "dynamic" => "Dynamic".into(),
            other => other.to_string(),
        },
        Value::Array(a) if a.len() == 2 => {
            let kind = a[0].as_str().unwrap_or("");
            match kind {
                "list" => format!("List of {}", type_words(&a[1])),
                "set" => format!("Set of {}", type_words(&a[1])),
                "map" => format!("Map of {}", type_words(&a[1])),
                "object" => "Object".into(),
                other => other.to_string(),
            }
        }
        _ => "Dynamic".into(),
    }
}

fn object_fields(t: &Value) -> Option<&serde_json::Map<String, Value>> {
    match t {
        Value::Array(a) if a.len() == 2 && a[0] == "object" => a[1].as_object(),
        Value::Array(a) if a.len() == 2 => object_fields(&a[1]),
        _ => None,
    }
}

fn one_line(s: &str) -> String {
    s.trim().to_string()
}

struct Section<'a> {
    required: Vec<(&'a String, &'a Value)>,
    optional: Vec<(&'a String, &'a Value)>,
    read_only: Vec<(&'a String, &'a Value)>,
}

fn split(attrs: &serde_json::Map<String, Value>) -> Section<'_> {
    let mut s = Section {
        required: vec![],
        optional: vec![],
        read_only: vec![],
    };
    let mut names: Vec<&String> = attrs.keys().collect();
    names.sort();
    for n in names {
        let a = &attrs[n];
        let flag = |k: &str| a.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("required") {
            s.required.push((n, a));
        } else if flag("optional") {
            s.optional.push((n, a));
        } else {
            s.read_only.push((n, a));
        }
    }
    s
}

fn render_block(out: &mut String, block: &Value, anchor_prefix: &str, nested: &mut Vec<(String, String)>) {
    let empty = serde_json::Map::new();
    let attrs = block.get("attributes").and_then(Value::as_object).unwrap_or(&empty);
    let blocks = block.get("block_types").and_then(Value::as_object).unwrap_or(&empty);
    let sec = split(attrs);
    let mut optional_blocks: Vec<&String> = blocks.keys().collect();
    optional_blocks.sort();
    let mut list = |out: &mut String, title: &str, items: &[(&String, &Value)], blocks: &[&String]| {
        if items.is_empty() && blocks.is_empty() {
            return;
        }
        let _ = writeln!(out, "### {title}\n");
        for (n, a) in items {
            let ty = type_words(&a["type"]);
            let sens = if a.get("sensitive").and_then(Value::as_bool).unwrap_or(false) {
                ", Sensitive"
            } else {
                ""
            };
            let desc = one_line(a.get("description").and_then(Value::as_str).unwrap_or(""));
            if let Some(fields) = object_fields(&a["type"]) {
                let anchor = format!("{anchor_prefix}nestedatt--{n}");
                let _ = writeln!(out, "- `{n}` ({ty}{sens}) {desc} (see [below for nested schema](#{anchor}))");
                let mut body = String::new();
                let _ = writeln!(body, "<a id=\"{anchor}\"></a>\n### Nested Schema for `{n}`\n\nRead-Only:\n");
                let mut fnames: Vec<&String> = fields.keys().collect();
                fnames.sort();
                for f in fnames {
                    let _ = writeln!(body, "- `{f}` ({})", type_words(&fields[f]));
                }
                nested.push((anchor, body));
            } else {
                let _ = writeln!(out, "- `{n}` ({ty}{sens}) {desc}");
            }
        }
        for b in blocks {
            let anchor = format!("{anchor_prefix}nestedblock--{b}");
            let inner = &blocks_map_get(block, b);
            let desc = one_line(inner["block"].get("description").and_then(Value::as_str).unwrap_or(""));
            let _ = writeln!(out, "- `{b}` (Block, Optional) {desc} (see [below for nested schema](#{anchor}))");
            let mut body = String::new();
            let _ = writeln!(body, "<a id=\"{anchor}\"></a>\n### Nested Schema for `{b}`\n");
            let mut deeper = Vec::new();
            render_block(&mut body, &inner["block"], &format!("{anchor_prefix}{b}--"), &mut deeper);
            nested.push((anchor, body));
            nested.extend(deeper);
        }
        let _ = writeln!(out);
    };
    list(out, "Required", &sec.required, &[]);
    list(out, "Optional", &sec.optional, &optional_blocks);
    list(out, "Read-Only", &sec.read_only, &[]);
}

fn blocks_map_get(block: &Value, name: &str) -> Value {
    block["block_types"][name].clone()
}

fn schema_section(block: &Value) -> String {
    let mut out = String::from("<!-- schema generated from `terraform providers schema -json` by terraform-provider-homelab docs -->\n## Schema\n\n");
    let mut nested = Vec::new();
    render_block(&mut out, block, "", &mut nested);
    for (_, body) in nested {
        out.push_str(&body);
        out.push('\n');
    }
    out.trim_end().to_string() + "\n"
}

fn code(lang: &str, body: &str) -> String {
    format!("```{lang}\n{}\n```\n", body.trim_end())
}

fn page(kind_title: &str, type_name: &str, schema: &Value, example: Option<String>, import: Option<String>) -> String {
    let block = &schema["block"];
    let desc = one_line(block.get("description").and_then(Value::as_str).unwrap_or(""));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\npage_title: \"{type_name} {kind_title} - terraform-provider-homelab\"\nsubcategory: \"\"\ndescription: |-\n  {}\n---\n",
        desc.replace('\n', "\n  ")
    );
    let _ = writeln!(out, "# {type_name} ({kind_title})\n\n{desc}\n");
    if let Some(ex) = example {
        let _ = writeln!(out, "## Example Usage\n\n{}", code("terraform", &ex));
    }
    out.push_str(&schema_section(block));
    if let Some(imp) = import {
        let _ = write!(out, "\n## Import\n\nImport is supported using the following syntax:\n\n{}", code("shell", &imp));
    }
    out
}

/// Generate every page; returns the files written.
pub fn generate(schema_json: &Path, examples: &Path, out: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let pages = render(&read(schema_json)?, examples).map_err(|why| DocsError::Schema {
        path: schema_json.into(),
        why,
    })?;
    let mut written = Vec::new();
    for (rel, body) in pages {
        let path = out.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DocsError::Io {
                path: dir.into(),
                source,
            })?;
        }
        std::fs::write(&path, body).map_err(|source| DocsError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Render every page as (relative path, content).
pub fn render(schema_json: &str, examples: &Path) -> Result<BTreeMap<String, String>, String> {
    let root: Value = serde_json::from_str(schema_json).map_err(|e| e.to_string())?;
    let p = root
        .get("provider_schemas")
        .and_then(|m| m.get(PROVIDER_ADDRESS))
        .ok_or_else(|| format!("no provider_schemas.\"{PROVIDER_ADDRESS}\""))?;
    let mut pages = BTreeMap::new();
    let provider = &p["provider"];
    let mut index = String::new();
    let desc = one_line(provider["block"].get("description").and_then(Value::as_str).unwrap_or(""));
    let _ = writeln!(
        index,
        "---\npage_title: \"homelab Provider\"\nsubcategory: \"\"\ndescription: |-\n  {}\n---\n\n# homelab Provider\n\n{desc}\n",
        desc.replace('\n', "\n  ")
    );
    if let Some(ex) = read_opt(&examples.join("provider/provider.tf")) {
        let _ = writeln!(index, "## Example Usage\n\n{}", code("terraform", &ex));
    }
    index.push_str(&schema_section(&provider["block"]));
    pages.insert("index.md".to_string(), index);
    for (section, dir, title) in [
        ("resource_schemas", "resources", "Resource"),
        ("data_source_schemas", "data-sources", "Data Source"),
        // Only clients of protocol 6.7+ (Terraform 1.10+) report these.
        ("ephemeral_resource_schemas", "ephemeral-resources", "Ephemeral Resource"),
    ] {
        let Some(map) = p.get(section).and_then(Value::as_object) else {
            continue;
        };
        for (type_name, schema) in map {
            let short = type_name
                .strip_prefix(&format!("{PROVIDER_NAME}_"))
                .unwrap_or(type_name);
            let ex_dir = examples.join(dir).join(type_name);
            let example_file = match dir {
                "resources" => "resource.tf",
                "ephemeral-resources" => "ephemeral-resource.tf",
                _ => "data-source.tf",
            };
            let example = read_opt(&ex_dir.join(example_file));
            let import = read_opt(&ex_dir.join("import.sh"));
            pages.insert(
                format!("{dir}/{short}.md"),
                page(title, type_name, schema, example, import),
            );
        }
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_in_words() {
        assert_eq!(type_words(&json!("string")), "String");
        assert_eq!(type_words(&json!(["list", "string"])), "List of String");
        assert_eq!(type_words(&json!(["list", ["object", {"a": "string"}]])), "List of Object");
        assert_eq!(type_words(&json!(["set", "string"])), "Set of String");
    }

    #[test]
    fn page_lists_attributes_by_constraint_with_nested_objects() {
        let schema = json!({"provider_schemas": {PROVIDER_ADDRESS: {
            "provider": {"block": {"description": "P", "attributes": {"home": {"type": "string", "optional": true, "description": "Folder."}}}},
            "resource_schemas": {"homelab_instance": {"block": {"description": "I", "attributes": {
                "name": {"type": "string", "required": true, "description": "Name."},
                "nodes": {"type": ["list", ["object", {"ip": "string", "name": "string"}]], "computed": true, "description": "Nodes."},
                "kubeconfig": {"type": "string", "computed": true, "sensitive": true, "description": "K."}
            }, "block_types": {"timeouts": {"nesting_mode": "list", "max_items": 1, "block": {"description": "T", "attributes": {"create": {"type": "string", "optional": true, "description": "C."}}}}}}}}
        }}});
        let dir = tempfile::tempdir().unwrap();
        let pages = render(&schema.to_string(), dir.path()).unwrap();
        let inst = &pages["resources/instance.md"];
        assert!(inst.contains("### Required\n\n- `name` (String) Name."), "{inst}");
        assert!(inst.contains("- `kubeconfig` (String, Sensitive) K."), "{inst}");
        assert!(inst.contains("### Nested Schema for `nodes`"), "{inst}");
        assert!(inst.contains("- `timeouts` (Block, Optional) T"), "{inst}");
        assert!(pages["index.md"].contains("- `home` (String) Folder."));
    }
}

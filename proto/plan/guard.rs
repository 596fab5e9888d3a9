//! Bounds checked on plan and config text before it is parsed, so that hostile input is
//! refused in milliseconds: nesting depth (TOML, JSON, YAML) and how much YAML aliases
//! expand to ("billion laughs"). libyaml's scanner costs time proportional to the flow
//! nesting depth for every token, so a 200 KB `[[[[...` took about a minute to reject;
//! here YAML is read event by event and given up on as soon as a bound is crossed.

use std::collections::HashMap;

use super::Format;

/// Deepest nesting of tables, arrays, mappings and sequences (a plan needs about 5).
pub const MAX_NESTING: usize = 32;
/// Most nodes that YAML aliases may add to a document once expanded.
pub const MAX_ALIAS_NODES: u64 = 100_000;

/// Checks `text` against the bounds above; the error names the limit and the line.
pub fn check(text: &str, format: Format) -> Result<(), String> {
    match format {
        Format::Toml => toml_nesting(text),
        Format::Json => json_nesting(text),
        Format::Yaml => yaml_bounds(text),
    }
}

fn too_deep(line: u64) -> String {
    format!("nesting deeper than the limit of {MAX_NESTING} levels (line {line})")
}

/// Scans TOML lexically: strings and comments are skipped, brackets and braces nest, and
/// the parts of a dotted key (or of a table header, for the lines under it) count as levels.
fn toml_nesting(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let (mut i, mut line) = (0usize, 1u64);
    // Levels opened by brackets, by the dotted key being read, and by the table header.
    let (mut depth, mut dots, mut header) = (0usize, 0usize, 1usize);
    let mut line_start = true;
    let mut in_header: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                dots = 0;
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                let (end, lines) = skip_toml_string(b, i);
                i = end;
                line += lines;
                line_start = false;
                continue;
            }
            b'[' if depth == 0 && line_start => {
                // A table header: `[a.b]` or `[[a.b]]` (an array of tables is one more).
                let double = b.get(i + 1) == Some(&b'[');
                in_header = Some(usize::from(double));
                dots = 0;
                i += 1 + usize::from(double);
                line_start = false;
                continue;
            }
            b']' if in_header.is_some() => {
                header = 1 + in_header.unwrap_or(0) + dots;
                in_header = None;
                while i < b.len() && b[i] == b']' {
                    i += 1;
                }
                dots = 0;
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                dots = 0;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                dots = 0;
            }
            b',' | b'=' => dots = 0,
            b'.' => dots += 1,
            _ => {}
        }
        line_start = false;
        if header + depth + dots > MAX_NESTING {
            return Err(too_deep(line));
        }
        i += 1;
    }
    Ok(())
}

/// Skips a TOML string starting at `b[start]` (basic or literal, single- or multi-line);
/// returns the index after it and the newlines it held. An unterminated string ends the
/// scan (the parser reports it).
fn skip_toml_string(b: &[u8], start: usize) -> (usize, u64) {
    let q = b[start];
    let multi = b.len() >= start + 3 && b[start + 1] == q && b[start + 2] == q;
    let mut i = start + if multi { 3 } else { 1 };
    let mut lines = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 1,
            b'\n' if !multi => return (i, lines),
            b'\n' => lines += 1,
            c if c == q => {
                if !multi {
                    return (i + 1, lines);
                }
                if b.len() >= i + 3 && b[i + 1] == q && b[i + 2] == q {
                    // Up to two more quotes may belong to the string (`""""`).
                    let mut end = i + 3;
                    while end < b.len() && end < i + 5 && b[end] == q {
                        end += 1;
                    }
                    return (end, lines);
                }
            }
            _ => {}
        }
        i += 1;
    }
    (b.len(), lines)
}

/// Scans JSON lexically: strings are skipped, brackets and braces nest.
fn json_nesting(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let (mut i, mut line, mut depth) = (0usize, 1u64, 0usize);
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    } else if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep(line));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// An anchored collection being read: its name and the nodes counted before it started.
struct Open {
    anchor: Option<Vec<u8>>,
    nodes_before: u64,
}

/// Reads YAML event by event with libyaml (the parser serde_yaml_ng uses, so both see the
/// same structure), counting nesting and what each alias expands to; stops at the first
/// bound crossed. A syntax error ends the check: the real parse reports it.
fn yaml_bounds(text: &str) -> Result<(), String> {
    let mut events = YamlEvents::new(text);
    let mut open: Vec<Open> = Vec::new();
    // Nodes read so far, aliases expanded; the size of each anchored node.
    let mut nodes: u64 = 0;
    let mut alias_nodes: u64 = 0;
    let mut sizes: HashMap<Vec<u8>, u64> = HashMap::new();
    while let Some(e) = events.next() {
        match e.kind {
            YamlKind::Start => {
                nodes += 1;
                open.push(Open {
                    anchor: e.anchor,
                    nodes_before: nodes,
                });
                if open.len() > MAX_NESTING {
                    return Err(too_deep(e.line));
                }
            }
            YamlKind::End => {
                if let Some(Open {
                    anchor: Some(name),
                    nodes_before,
                }) = open.pop()
                {
                    sizes.insert(name, nodes - nodes_before + 1);
                }
            }
            YamlKind::Scalar => {
                nodes += 1;
                if let Some(name) = e.anchor {
                    sizes.insert(name, 1);
                }
            }
            YamlKind::Alias => {
                let size = e.anchor.and_then(|a| sizes.get(&a).copied()).unwrap_or(1);
                nodes = nodes.saturating_add(size);
                alias_nodes = alias_nodes.saturating_add(size);
                if alias_nodes > MAX_ALIAS_NODES {
                    return Err(format!(
                        "aliases expand to more than the limit of {MAX_ALIAS_NODES} nodes (line {})",
                        e.line
                    ));
                }
            }
            YamlKind::Other => {}
        }
    }
    Ok(())
}

enum YamlKind {
    /// A sequence or mapping starts.
    Start,
    End,
    Scalar,
    Alias,
    Other,
}

/// One libyaml event, as much as the bounds need.
struct YamlEvent {
    kind: YamlKind,
    /// The anchor a node defines, or the one an alias names.
    anchor: Option<Vec<u8>>,
    /// 1-based.
    line: u64,
}

/// libyaml's event parser over a string; ends at the end of the stream or the first error.
struct YamlEvents<'a> {
    /// Boxed: libyaml keeps pointers into the parser while it runs, so it must not move.
    parser: Box<std::mem::MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    _input: &'a str,
    initialized: bool,
    done: bool,
}

impl<'a> YamlEvents<'a> {
    fn new(input: &'a str) -> YamlEvents<'a> {
        let mut parser = Box::new(std::mem::MaybeUninit::uninit());
        let p = parser.as_mut_ptr();
        // SAFETY: `p` points to writable memory for a parser; initialize fills all of it.
        // The input outlives the parser (`'a`, kept in `_input`); its length is exact.
        let ok = unsafe {
            let ok = !unsafe_libyaml::yaml_parser_initialize(p).fail;
            if ok {
                unsafe_libyaml::yaml_parser_set_encoding(p, unsafe_libyaml::YAML_UTF8_ENCODING);
                unsafe_libyaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as u64);
            }
            ok
        };
        YamlEvents {
            parser,
            _input: input,
            initialized: ok,
            // Without a parser there is nothing to check; the real parse still runs.
            done: !ok,
        }
    }

    fn next(&mut self) -> Option<YamlEvent> {
        use unsafe_libyaml as unsafe_yaml;
        if self.done {
            return None;
        }
        let mut event = std::mem::MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
        let ev = event.as_mut_ptr();
        // SAFETY: the parser was initialized (`done` is false otherwise) and stays at its
        // boxed address; `ev` is writable memory for one event, filled by yaml_parser_parse
        // when it succeeds (it zeroes it first either way).
        if unsafe { unsafe_yaml::yaml_parser_parse(self.parser.as_mut_ptr(), ev).fail } {
            self.done = true;
            return None;
        }
        // SAFETY: the event was filled in; the union field read is the one its type says,
        // and anchors are NUL-terminated strings owned by the event until it is deleted.
        let out = unsafe {
            let anchor = |ptr: *mut u8| {
                (!ptr.is_null()).then(|| std::ffi::CStr::from_ptr(ptr.cast()).to_bytes().to_vec())
            };
            let kind_anchor = match (*ev).type_ {
                unsafe_yaml::YAML_SEQUENCE_START_EVENT => {
                    (YamlKind::Start, anchor((*ev).data.sequence_start.anchor))
                }
                unsafe_yaml::YAML_MAPPING_START_EVENT => {
                    (YamlKind::Start, anchor((*ev).data.mapping_start.anchor))
                }
                unsafe_yaml::YAML_SEQUENCE_END_EVENT | unsafe_yaml::YAML_MAPPING_END_EVENT => {
                    (YamlKind::End, None)
                }
                unsafe_yaml::YAML_SCALAR_EVENT => {
                    (YamlKind::Scalar, anchor((*ev).data.scalar.anchor))
                }
                unsafe_yaml::YAML_ALIAS_EVENT => (YamlKind::Alias, anchor((*ev).data.alias.anchor)),
                unsafe_yaml::YAML_STREAM_END_EVENT => {
                    self.done = true;
                    (YamlKind::Other, None)
                }
                _ => (YamlKind::Other, None),
            };
            let line = (*ev).start_mark.line + 1;
            unsafe_yaml::yaml_event_delete(ev);
            YamlEvent {
                kind: kind_anchor.0,
                anchor: kind_anchor.1,
                line,
            }
        };
        Some(out)
    }
}

impl Drop for YamlEvents<'_> {
    fn drop(&mut self) {
        if self.initialized {
            // SAFETY: the parser was initialized and is deleted once, here; this frees what
            // initialize and parsing allocated.
            unsafe { unsafe_libyaml::yaml_parser_delete(self.parser.as_mut_ptr()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_plan;

    fn refusal(text: &str, format: Format) -> String {
        match parse_plan(text, format, "p", "p") {
            Ok(_) => panic!("accepted: {}", &text[..text.len().min(80)]),
            Err(e) => e.to_string(),
        }
    }

    fn nested(open: &str, close: &str, n: usize) -> String {
        format!("{}{}", open.repeat(n), close.repeat(n))
    }

    const TOO_DEEP: &str = "nesting deeper than the limit of 32 levels";

    #[test]
    fn deep_yaml_is_refused_before_libyaml_spends_minutes_on_it() {
        // Each took from seconds to minutes (quadratic in the depth) before this guard.
        for text in [
            format!("steps: {}", "[".repeat(200_000)),
            format!("steps: {}", nested("[", "]", 100_000)),
            format!("steps: {}", nested("{a: ", "}", 50_000)),
            format!("steps:\n{}", "- ".repeat(100_000)),
        ] {
            let e = refusal(&text, Format::Yaml);
            assert!(e.starts_with(&format!("p: {TOO_DEEP} (line ")), "{e}");
        }
        let mut block = String::from("steps:\n");
        for d in 0..200 {
            block.push_str(&format!("{}a:\n", " ".repeat(d + 1)));
        }
        assert!(refusal(&block, Format::Yaml).contains(TOO_DEEP));
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        // Billion laughs: nine levels of ten aliases each.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        laughs.push_str("steps: [{id: a, command: *a8}]\n");
        // Wide: one big anchored list, named again and again.
        let big = vec!["x"; 2000].join(", ");
        let wide = format!(
            "big: &big [{big}]\nsteps: [{{id: a, command: [{}]}}]\n",
            vec!["*big"; 100].join(", ")
        );
        for text in [laughs, wide] {
            let e = refusal(&text, Format::Yaml);
            assert!(
                e.contains("aliases expand to more than the limit of 100000 nodes (line "),
                "{e}"
            );
        }
    }

    #[test]
    fn a_few_aliases_are_fine() {
        let text = "x: &cmd [echo, hi]\nname: n\nsteps:\n  - {id: a, command: *cmd}\n  - {id: b, command: *cmd}\n";
        let e = refusal(text, Format::Yaml);
        // Only the schema objects (unknown key `x`): the guard let it through.
        assert!(e.contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn deep_toml_is_refused() {
        for text in [
            format!("a = {}", nested("[", "]", 100_000)),
            format!("a = {}1{}", "{a=".repeat(100_000), "}".repeat(100_000)),
            format!("{} = 1", vec!["a"; 50_000].join(".")),
            format!("[{}]\nb = 1", vec!["a"; 40].join(".")),
            format!("[{}]\nb.c.d.e.f = 1", vec!["a"; 29].join(".")),
        ] {
            let e = refusal(&text, Format::Toml);
            assert!(e.starts_with(&format!("p: {TOO_DEEP} (line ")), "{e}");
        }
    }

    #[test]
    fn deep_json_is_refused() {
        let text = format!("{{\"steps\": {}}}", nested("[", "]", 100_000));
        assert!(refusal(&text, Format::Json).starts_with(&format!("p: {TOO_DEEP} (line 1)")));
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let deep = "[".repeat(100);
        let toml = format!(
            "# {deep}\nname = \"{deep}\"\ngoal = '''\n{deep}\n'''\n[[steps]]\nid = \"a\"\ncommand = [\"echo\", '{deep}', \"\"\"{deep}\\\"\"\"\"]\n"
        );
        assert!(parse_plan(&toml, Format::Toml, "p", "p").is_ok());
        let json =
            format!(r#"{{"name": "{deep}\"[", "steps": [{{"id": "a", "command": ["{deep}"]}}]}}"#);
        assert!(parse_plan(&json, Format::Json, "p", "p").is_ok());
        let yaml = format!(
            "# {deep}\nname: \"{deep}\"\ngoal: |\n  {deep}\nsteps:\n  - id: a\n    command: ['{deep}', x]\n"
        );
        assert!(parse_plan(&yaml, Format::Yaml, "p", "p").is_ok());
    }

    #[test]
    fn the_contract_plan_passes_in_every_format() {
        let toml = "[defaults]\nretry = { max_attempts = 3, retry_on = [\"timeout\"] }\nlimits = { memory = \"2G\" }\n[[steps]]\nid = \"a\"\ncommand = [\"true\"]\nenv = { A = \"1\" }\n[steps.retry]\nmultiplier = 2.0\n";
        assert!(parse_plan(toml, Format::Toml, "p", "p").is_ok());
        let yaml = "defaults:\n  retry: {max_attempts: 3, retry_on: [timeout]}\nsteps:\n  - id: a\n    command: [\"true\"]\n    env: {A: \"1\"}\n";
        assert!(parse_plan(yaml, Format::Yaml, "p", "p").is_ok());
        let json = r#"{"defaults": {"retry": {"retry_on": ["timeout"]}}, "steps": [{"id": "a", "command": ["true"], "env": {"A": "1"}}]}"#;
        assert!(parse_plan(json, Format::Json, "p", "p").is_ok());
    }
}
